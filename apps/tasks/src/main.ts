// flotilla-tasks: containerd's Tasks API for the cluster; each task runs on one node's agent.
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { connectDb, migrate } from '@flotilla/db';
import { RestartMonitor, TasksRouter, tasksMigrations } from '@flotilla/tasks';

void runApp('tasks', async ({ cfg, bus, log }) => {
  const sql = connectDb(cfg.databaseUrl, { appName: 'flotilla-tasks' });
  await migrate(sql, 'tasks', tasksMigrations);
  const router = new TasksRouter(bus, sql);
  router.start();
  await bus.addService({
    name: 'flotilla-tasks',
    version: FLOTILLA_VERSION,
    description: 'containerd tasks (io.containerd.service.v1 tasks-service): placement and relay to node agents',
    metadata: { plugin_type: 'io.containerd.service.v1', plugin_id: 'tasks-service' },
    endpoints: router.endpoints(),
  });
  // containerd's restart monitor (containerd.io/restart.status labels).
  const monitor = new RestartMonitor(bus, sql, router, { log });
  monitor.start();
  return async () => {
    await monitor.stop();
    router.stop();
    await sql.end({ timeout: 5 });
  };
});
