// flotilla-tasks: containerd's Tasks API for the cluster; each task runs on one node's agent.
import { tasks as tapi, type MessageType } from '@flotilla/api';
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { serviceSubject, type EndpointSpec } from '@flotilla/bus';
import { connectDb, migrate } from '@flotilla/db';
import { errNotImplemented } from '@flotilla/errdefs';
import { TasksRouter, tasksMigrations } from '@flotilla/tasks';

void runApp('tasks', async ({ cfg, bus }) => {
  const sql = connectDb(cfg.databaseUrl, { appName: 'flotilla-tasks' });
  await migrate(sql, 'tasks', tasksMigrations);
  const router = new TasksRouter(bus, sql);

  const endpoints: EndpointSpec[] = [];
  for (const m of Object.values(tapi.TasksDefinition.methods)) {
    const subject = serviceSubject('tasks', m.name);
    const type = m.requestType as MessageType<{ containerId?: string }>;
    const idOf = (raw: Uint8Array) => type.decode(raw).containerId ?? '';
    switch (m.name) {
      case 'Create':
        endpoints.push({ method: m.name, subject, unary: (raw, ctx) => router.create(raw, ctx) });
        break;
      case 'List':
        endpoints.push({ method: m.name, subject, unary: (raw, ctx) => router.list(raw, ctx) });
        break;
      case 'Delete':
        endpoints.push({ method: m.name, subject, unary: router.relay(m.name, idOf, (ns, id) => router.forget(ns, id)) });
        break;
      case 'Metrics':
        endpoints.push({ method: m.name, subject, unary: async () => { throw errNotImplemented('metrics across nodes (issue 5)'); } });
        break;
      default:
        endpoints.push({ method: m.name, subject, unary: router.relay(m.name, idOf) });
    }
  }
  await bus.addService({
    name: 'flotilla-tasks',
    version: FLOTILLA_VERSION,
    description: 'containerd tasks (io.containerd.service.v1 tasks-service): placement and relay to node agents',
    metadata: { plugin_type: 'io.containerd.service.v1', plugin_id: 'tasks-service' },
    endpoints,
  });
  return async () => {
    await sql.end({ timeout: 5 });
  };
});
