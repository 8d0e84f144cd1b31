// The cluster tasks service. It keeps which node runs each task (tasks_placements) and
// relays every task call to that node's agent. Create reads the container from the
// metadata service and places the task on the node whose gateway received the call.
import { containers as capi, flotillaAgent, tasks as tapi, type MessageType } from '@flotilla/api';
import { type Bus, type CallContext, CONTINUE, type EndpointSpec, nodeSubject, rpcClient, serviceSubject } from '@flotilla/bus';
import { type Sql, sqlState, UNIQUE_VIOLATION } from '@flotilla/db';
import { ErrorClass, classOf, errAlreadyExists, errFailedPrecondition, errInvalidArgument, isNotFound, isUnavailable, withClass } from '@flotilla/errdefs';
import { namespaceRequired } from '@flotilla/identifiers';

export const tasksMigrations = [
  `CREATE TABLE tasks_placements (
     namespace text NOT NULL,
     container_id text NOT NULL,
     node text NOT NULL,
     created_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (namespace, container_id))`,
];

/**
 * One hop of a held Wait: the agent answers Continue within this (it holds for less), so a
 * hop that takes longer means the agent died holding it; the caller is told to ask again.
 */
export const WAIT_HOP_MS = 10_000;
/** Pause before asking again after the agent could not be reached (it may be restarting). */
const RETRY_PAUSE_MS = 500;

type Relay = (req: Uint8Array, ctx: CallContext) => Promise<Uint8Array | typeof CONTINUE>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class TasksRouter {
  private readonly containers;

  constructor(private readonly bus: Bus, private readonly sql: Sql) {
    this.containers = rpcClient(bus, capi.ContainersDefinition, (m) => serviceSubject('containers', m));
  }

  /** The node running the container's task; NotFound for the container first, then for its task, as containerd. */
  async nodeOf(ns: string, id: string): Promise<string> {
    const rows = await this.sql`SELECT node FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${id}`;
    if (rows.length === 0) {
      await this.containers.get({ id }, { namespace: ns });
      throw withClass(ErrorClass.NotFound, `task ${id} not found`);
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
    await this.place(ns, req.containerId, node, ctx);
    try {
      const msg = flotillaAgent.CreateRequest.encode({
        request: req,
        spec: container.spec,
        runtime: container.runtime?.name ?? '',
        runtimeOptions: container.runtime?.options,
      }).finish();
      return await this.bus.request(nodeSubject(node, 'agent', 'Create'), msg, ctx);
    } catch (err) {
      // An AlreadyExists from the agent means a task it still runs: the placement stands.
      if (classOf(err) !== ErrorClass.AlreadyExists) await this.forget(ns, req.containerId);
      throw err;
    }
  }

  /**
   * Records that the task runs on `node`. A placement left by a task that is gone (its shim
   * died, its node forgot it) is taken over; one whose task still exists is AlreadyExists.
   */
  private async place(ns: string, id: string, node: string, ctx: CallContext): Promise<void> {
    try {
      await this.sql`INSERT INTO tasks_placements (namespace, container_id, node) VALUES (${ns}, ${id}, ${node})`;
      return;
    } catch (err) {
      if (sqlState(err) !== UNIQUE_VIOLATION) throw err;
    }
    const [row] = await this.sql`SELECT node FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${id}`;
    if (row) {
      try {
        await this.bus.request(nodeSubject(row.node, 'agent', 'Get'), tapi.GetRequest.encode({ containerId: id, execId: '' }).finish(), ctx);
        throw errAlreadyExists(`task ${id}`);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
    await this.sql`INSERT INTO tasks_placements (namespace, container_id, node) VALUES (${ns}, ${id}, ${node})
      ON CONFLICT (namespace, container_id) DO UPDATE SET node = ${node}, created_at = now()`;
  }

  /** Relays a call about one container's task to the node running it. */
  relay(method: string, idOf: (raw: Uint8Array) => string): Relay {
    return async (raw, ctx) => {
      const ns = namespaceRequired(ctx);
      const node = await this.nodeOf(ns, idOf(raw));
      return this.bus.forward(nodeSubject(node, 'agent', method), raw, ctx);
    };
  }

  /** Delete: the placement goes with the task, or when the node no longer has it. */
  async delete(raw: Uint8Array, ctx: CallContext): Promise<Uint8Array> {
    const ns = namespaceRequired(ctx);
    const id = tapi.DeleteTaskRequest.decode(raw).containerId;
    const node = await this.nodeOf(ns, id);
    try {
      const out = await this.bus.request(nodeSubject(node, 'agent', 'Delete'), raw, ctx);
      await this.forget(ns, id);
      return out;
    } catch (err) {
      if (isNotFound(err)) await this.forget(ns, id);
      throw err;
    }
  }

  /**
   * Wait, held: one hop to the agent bounded by WAIT_HOP_MS. When the agent cannot be
   * reached or dies holding the call, the caller is told to ask again (Continue), so a Wait
   * outlives restarts of the agent; the caller's own deadline still ends it.
   */
  async wait(raw: Uint8Array, ctx: CallContext): Promise<Uint8Array | typeof CONTINUE> {
    const ns = namespaceRequired(ctx);
    const node = await this.nodeOf(ns, tapi.WaitRequest.decode(raw).containerId);
    const hop: CallContext = { ...ctx, deadline: Math.min(ctx.deadline ?? Infinity, Date.now() + WAIT_HOP_MS) };
    try {
      return await this.bus.forward(nodeSubject(node, 'agent', 'Wait'), raw, hop);
    } catch (err) {
      const transient = isUnavailable(err) || classOf(err) === ErrorClass.DeadlineExceeded;
      if (!transient || (ctx.deadline !== undefined && Date.now() + RETRY_PAUSE_MS >= ctx.deadline)) throw err;
      await sleep(RETRY_PAUSE_MS);
      return CONTINUE;
    }
  }

  /** The task is gone from its node: forget where it was. */
  async forget(ns: string, id: string): Promise<void> {
    await this.sql`DELETE FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${id}`;
  }

  private async nodesOf(ns: string): Promise<string[]> {
    const rows = await this.sql`SELECT DISTINCT node FROM tasks_placements WHERE namespace = ${ns} ORDER BY node`;
    return rows.map((r) => r.node as string);
  }

  /** Every node's tasks of the namespace (asked of each node that has one placed). */
  async list(raw: Uint8Array, ctx: CallContext): Promise<Uint8Array> {
    const ns = namespaceRequired(ctx);
    const req = tapi.ListTasksRequest.decode(raw);
    const tasks: tapi.ListTasksResponse['tasks'] = [];
    for (const node of await this.nodesOf(ns)) {
      const res = tapi.ListTasksResponse.decode(await this.bus.request(nodeSubject(node, 'agent', 'List'), tapi.ListTasksRequest.encode(req).finish(), ctx));
      tasks.push(...res.tasks);
    }
    return tapi.ListTasksResponse.encode({ tasks }).finish();
  }

  /** Every node's task metrics of the namespace, each node applying the filters. */
  async metrics(raw: Uint8Array, ctx: CallContext): Promise<Uint8Array> {
    const ns = namespaceRequired(ctx);
    const metrics: tapi.MetricsResponse['metrics'] = [];
    for (const node of await this.nodesOf(ns)) {
      metrics.push(...tapi.MetricsResponse.decode(await this.bus.request(nodeSubject(node, 'agent', 'Metrics'), raw, ctx)).metrics);
    }
    return tapi.MetricsResponse.encode({ metrics }).finish();
  }

  /** The Tasks service's endpoints on the cluster subjects. */
  endpoints(): EndpointSpec[] {
    const endpoints: EndpointSpec[] = [];
    for (const m of Object.values(tapi.TasksDefinition.methods)) {
      const subject = serviceSubject('tasks', m.name);
      const type = m.requestType as MessageType<{ containerId?: string; execId?: string }>;
      const idOf = (raw: Uint8Array) => type.decode(raw).containerId ?? '';
      const add = (unary: Relay) => endpoints.push({ method: m.name, subject, unary });
      switch (m.name) {
        case 'Create': add((raw, ctx) => this.create(raw, ctx)); break;
        case 'List': add((raw, ctx) => this.list(raw, ctx)); break;
        case 'Delete': add((raw, ctx) => this.delete(raw, ctx)); break;
        case 'Wait': add((raw, ctx) => this.wait(raw, ctx)); break;
        case 'Metrics': add((raw, ctx) => this.metrics(raw, ctx)); break;
        case 'Exec': {
          const relay = this.relay(m.name, idOf);
          // containerd checks the exec id before looking the task up.
          add(async (raw, ctx) => {
            if (!type.decode(raw).execId) throw errInvalidArgument('exec id cannot be empty');
            return relay(raw, ctx);
          });
          break;
        }
        default: add(this.relay(m.name, idOf));
      }
    }
    return endpoints;
  }
}
