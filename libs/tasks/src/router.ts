// The cluster tasks service. It keeps which node runs each task (tasks_placements) and
// relays every task call to that node's agent. Create reads the container from the
// metadata service and places the task on the node whose gateway received the call.
import { containers as capi, flotillaAgent, tasks as tapi } from '@flotilla/api';
import { type Bus, type CallContext, CONTINUE, nodeSubject, rpcClient, serviceSubject } from '@flotilla/bus';
import { type Sql, sqlState, UNIQUE_VIOLATION } from '@flotilla/db';
import { ErrorClass, errAlreadyExists, errFailedPrecondition, isNotFound, withClass } from '@flotilla/errdefs';
import { namespaceRequired } from '@flotilla/identifiers';

export const tasksMigrations = [
  `CREATE TABLE tasks_placements (
     namespace text NOT NULL,
     container_id text NOT NULL,
     node text NOT NULL,
     created_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (namespace, container_id))`,
];

type Relay = (req: Uint8Array, ctx: CallContext) => Promise<Uint8Array | typeof CONTINUE>;

export class TasksRouter {
  private readonly containers;

  constructor(private readonly bus: Bus, private readonly sql: Sql) {
    this.containers = rpcClient(bus, capi.ContainersDefinition, (m) => serviceSubject('containers', m));
  }

  private async nodeOf(ns: string, id: string): Promise<string> {
    const rows = await this.sql`SELECT node FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${id}`;
    if (rows.length === 0) {
      // containerd answers for the container first, then for its task.
      await this.containers.get({ id }, { namespace: ns });
      throw withClass(ErrorClass.NotFound, `no running task found: task ${id} not found`);
    }
    return rows[0]!.node;
  }

  async create(raw: Uint8Array, ctx: CallContext): Promise<Uint8Array> {
    const ns = namespaceRequired(ctx);
    const req = tapi.CreateTaskRequest.decode(raw);
    const { container } = await this.containers.get({ id: req.containerId }, ctx);
    if (!container) throw withClass(ErrorClass.NotFound, `container "${req.containerId}": not found`);
    const node = ctx.node;
    if (!node) throw errFailedPrecondition('no node to run the task on: the call did not come through a gateway');
    try {
      await this.sql`INSERT INTO tasks_placements (namespace, container_id, node) VALUES (${ns}, ${req.containerId}, ${node})`;
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`task ${req.containerId}`);
      throw err;
    }
    try {
      const msg = flotillaAgent.CreateRequest.encode({
        request: req,
        spec: container.spec,
        runtime: container.runtime?.name ?? '',
        runtimeOptions: container.runtime?.options,
      }).finish();
      return await this.bus.request(nodeSubject(node, 'agent', 'Create'), msg, ctx);
    } catch (err) {
      await this.sql`DELETE FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${req.containerId}`;
      throw err;
    }
  }

  /** Relays a call about one container's task to the node running it. */
  relay(method: string, idOf: (raw: Uint8Array) => string, after?: (ns: string, id: string) => Promise<void>): Relay {
    return async (raw, ctx) => {
      const ns = namespaceRequired(ctx);
      const id = idOf(raw);
      const node = await this.nodeOf(ns, id);
      const out = await this.bus.forward(nodeSubject(node, 'agent', method), raw, ctx);
      if (after) await after(ns, id);
      return out;
    };
  }

  /** The task is gone from its node: forget where it was. */
  async forget(ns: string, id: string): Promise<void> {
    await this.sql`DELETE FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${id}`;
  }

  async list(raw: Uint8Array, ctx: CallContext): Promise<Uint8Array> {
    const ns = namespaceRequired(ctx);
    void tapi.ListTasksRequest.decode(raw);
    const rows = await this.sql`SELECT container_id, node FROM tasks_placements WHERE namespace = ${ns} ORDER BY container_id`;
    const tasks: tapi.GetResponse['process'][] = [];
    for (const r of rows) {
      try {
        const res = tapi.GetResponse.decode(await this.bus.request(nodeSubject(r.node, 'agent', 'Get'), tapi.GetRequest.encode({ containerId: r.container_id, execId: '' }).finish(), ctx));
        if (res.process) tasks.push(res.process);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
    return tapi.ListTasksResponse.encode({ tasks: tasks.filter((t) => t !== undefined) }).finish();
  }
}
