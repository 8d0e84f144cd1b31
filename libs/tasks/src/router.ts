// The cluster tasks service. It keeps which node runs each task (tasks_placements) and
// relays every task call to that node's agent. Create reads the container from the
// metadata service and places the task on the node whose gateway received the call.
import { containers as capi, events as ev, evTask, flotillaAgent, tasks as tapi, type MessageType } from '@flotilla/api';
import { type Bus, type CallContext, CONTINUE, type EndpointSpec, eventSubject, nodeSubject, rpcClient, serviceSubject } from '@flotilla/bus';
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

/** Placements remembered per process; beyond this many, the oldest are forgotten. */
const MAX_REMEMBERED = 50_000;

export class TasksRouter {
  private readonly containers;
  /**
   * Placements this replica has read or written, `<ns>\0<id>` -> node. A placement never
   * changes while its task exists; it changes only when the task is deleted (or gone) and
   * created again, possibly through another replica and on another node. So a remembered
   * node is trusted until that node answers NotFound for the task: then the table is read
   * again and the call retried only if the placement moved (see onNode). Entries go on our
   * own Delete and on every /tasks/delete event, which keeps the map to live tasks.
   */
  private readonly placements = new Map<string, string>();
  private deletes?: { unsubscribe(): void };

  constructor(private readonly bus: Bus, private readonly sql: Sql) {
    this.containers = rpcClient(bus, capi.ContainersDefinition, (m) => serviceSubject('containers', m));
  }

  /** Drops remembered placements of deleted tasks (/tasks/delete, whichever process deleted them). */
  start(): void {
    this.deletes ??= this.bus.subscribe(eventSubject('/tasks/delete'), (data) => {
      try {
        const env = ev.Envelope.decode(data);
        if (env.event) this.placements.delete(placementKey(env.namespace, evTask.TaskDelete.decode(env.event.value).containerId));
      } catch {
        // Not an envelope we can read: nothing to drop.
      }
    });
  }

  stop(): void {
    this.deletes?.unsubscribe();
    this.deletes = undefined;
  }

  /**
   * The node running the container's task, read from the table (never remembered); NotFound
   * for the container first, then for its task, as containerd.
   */
  async nodeOf(ns: string, id: string): Promise<string> {
    const rows = await this.sql`SELECT node FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${id}`;
    if (rows.length === 0) {
      await this.containers.get({ id }, { namespace: ns });
      throw withClass(ErrorClass.NotFound, `task ${id} not found`);
    }
    return rows[0]!.node;
  }

  /**
   * nodeOf for a call this replica has no placement for: mostly a task that is gone (ctr's
   * Gets after its Delete), which needs the container's answer too, so the container is read
   * while the table is (its answer is dropped when a placement is found).
   */
  private async lookup(ns: string, id: string): Promise<string> {
    const container = this.containers.get({ id }, { namespace: ns }).then(() => undefined, (err: unknown) => ({ err }));
    const rows = await this.sql`SELECT node FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${id}`;
    if (rows.length > 0) return rows[0]!.node;
    const missing = await container;
    if (missing) throw missing.err;
    throw withClass(ErrorClass.NotFound, `task ${id} not found`);
  }

  private remember(ns: string, id: string, node: string): void {
    const k = placementKey(ns, id);
    this.placements.delete(k);
    if (this.placements.size >= MAX_REMEMBERED) this.placements.delete(this.placements.keys().next().value!);
    this.placements.set(k, node);
  }

  /**
   * Calls `call` with the task's node. With a remembered node, a NotFound answer may only
   * mean the task was deleted and placed again elsewhere: the table is read again and the
   * call repeated on the new node if it moved; otherwise that node's answer stands.
   */
  private async onNode<T>(ns: string, id: string, call: (node: string) => Promise<T>): Promise<T> {
    const known = this.placements.get(placementKey(ns, id));
    if (known === undefined) {
      const node = await this.lookup(ns, id);
      this.remember(ns, id, node);
      return call(node);
    }
    try {
      return await call(known);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      this.placements.delete(placementKey(ns, id));
      let node: string;
      try {
        node = await this.nodeOf(ns, id);
      } catch (e) {
        if (isNotFound(e)) throw err;
        throw e;
      }
      this.remember(ns, id, node);
      if (node === known) throw err;
      return call(node);
    }
  }

  async create(raw: Uint8Array, ctx: CallContext): Promise<Uint8Array> {
    const ns = namespaceRequired(ctx);
    const req = tapi.CreateTaskRequest.decode(raw);
    const node = ctx.node;
    // The container read and the placement (a durable commit) are independent: both run at
    // once. Errors keep containerd's order (the container's before the task's), and a
    // placement made for a container that turned out missing is taken back.
    const [got, placed] = await Promise.allSettled([
      this.containers.get({ id: req.containerId }, ctx),
      node ? this.place(ns, req.containerId, node, ctx) : Promise.resolve(),
    ]);
    const container = got.status === 'fulfilled' ? got.value.container : undefined;
    if (!container) {
      if (node && placed.status === 'fulfilled') await this.forget(ns, req.containerId, node);
      if (got.status === 'rejected') throw got.reason;
      throw withClass(ErrorClass.NotFound, `container "${req.containerId}": not found`);
    }
    if (!node) throw errFailedPrecondition('no node to run the task on: the call did not come through a gateway');
    if (placed.status === 'rejected') throw placed.reason;
    this.remember(ns, req.containerId, node);
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
      if (classOf(err) !== ErrorClass.AlreadyExists) await this.forget(ns, req.containerId, node);
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
      return this.onNode(ns, idOf(raw), (node) => this.bus.forward(nodeSubject(node, 'agent', method), raw, ctx));
    };
  }

  /** Delete: the placement goes with the task, or when the node no longer has it. */
  async delete(raw: Uint8Array, ctx: CallContext): Promise<Uint8Array> {
    const ns = namespaceRequired(ctx);
    const id = tapi.DeleteTaskRequest.decode(raw).containerId;
    let node: string | undefined;
    try {
      const out = await this.onNode(ns, id, (n) => this.bus.request(nodeSubject((node = n), 'agent', 'Delete'), raw, ctx));
      await this.forget(ns, id, node!);
      return out;
    } catch (err) {
      if (isNotFound(err) && node !== undefined) await this.forget(ns, id, node);
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
    const hop: CallContext = { ...ctx, deadline: Math.min(ctx.deadline ?? Infinity, Date.now() + WAIT_HOP_MS) };
    try {
      return await this.onNode(ns, tapi.WaitRequest.decode(raw).containerId, (node) => this.bus.forward(nodeSubject(node, 'agent', 'Wait'), raw, hop));
    } catch (err) {
      const transient = isUnavailable(err) || classOf(err) === ErrorClass.DeadlineExceeded;
      if (!transient || (ctx.deadline !== undefined && Date.now() + RETRY_PAUSE_MS >= ctx.deadline)) throw err;
      await sleep(RETRY_PAUSE_MS);
      return CONTINUE;
    }
  }

  /** The task is gone from `node`: forget that it was there (a placement on another node stays). */
  async forget(ns: string, id: string, node: string): Promise<void> {
    this.placements.delete(placementKey(ns, id));
    await this.sql`DELETE FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${id} AND node = ${node}`;
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

function placementKey(ns: string, id: string): string {
  return `${ns}\0${id}`;
}
