// The node agent's side of the tasks API: containerd's task calls, answered from this
// node's shims. Reached on flotilla.v1.node.<node>.agent.<Method> from the tasks service.
import { Empty, flotillaAgent, tasks as tapi, taskTypes, type MessageType } from '@flotilla/api';
import { CONTINUE, type CallContext, type EndpointSpec, nodeSubject } from '@flotilla/bus';
import { errInvalidArgument, errNotImplemented, ErrorClass, withClass } from '@flotilla/errdefs';
import { namespaceRequired } from '@flotilla/identifiers';
import type { ShimManager } from '@flotilla/runtime';

/** How long the agent holds a Wait before answering Continue (the caller asks again). */
const WAIT_HOLD_MS = 20_000;

export class AgentService {
  /** In-flight shim Waits, shared by repeated (continued) Wait calls for the same process. */
  private readonly waits = new Map<string, Promise<{ exitStatus: number; exitedAt: tapi.WaitResponse['exitedAt'] }>>();

  constructor(private readonly shims: ShimManager, private readonly holdMs = WAIT_HOLD_MS) {}

  private notFound(id: string): never {
    throw withClass(ErrorClass.NotFound, `task ${id} not found`);
  }

  private ensure(ns: string, id: string): void {
    if (!this.shims.has(ns, id)) this.notFound(id);
  }

  async create(req: flotillaAgent.CreateRequest, ctx: CallContext): Promise<tapi.CreateTaskResponse> {
    const ns = namespaceRequired(ctx);
    const r = req.request;
    if (!r) throw errInvalidArgument('create request must be set');
    if (!req.spec) throw errInvalidArgument('container spec must be set');
    if (r.checkpoint) throw errNotImplemented('checkpoint restore (issue 5)');
    const { pid } = await this.shims.createTask({
      namespace: ns,
      id: r.containerId,
      bundleSpec: req.spec.value,
      runtime: req.runtime,
      rootfs: r.rootfs,
      stdin: r.stdin,
      stdout: r.stdout,
      stderr: r.stderr,
      terminal: r.terminal,
      options: r.options ?? req.runtimeOptions,
    });
    return { containerId: r.containerId, pid };
  }

  async start(req: tapi.StartRequest, ctx: CallContext): Promise<tapi.StartResponse> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    return this.shims.startTask(ns, req.containerId, req.execId);
  }

  async wait(req: tapi.WaitRequest, ctx: CallContext): Promise<tapi.WaitResponse | typeof CONTINUE> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    const key = `${ns}/${req.containerId}/${req.execId}`;
    let p = this.waits.get(key);
    if (!p) {
      p = this.shims.wait(ns, req.containerId, req.execId);
      this.waits.set(key, p);
      const drop = () => this.waits.delete(key);
      p.then(drop, drop);
    }
    let timer: NodeJS.Timeout | undefined;
    const held = new Promise<typeof CONTINUE>((resolve) => (timer = setTimeout(() => resolve(CONTINUE), this.holdMs)));
    try {
      return await Promise.race([p, held]);
    } finally {
      clearTimeout(timer);
    }
  }

  async kill(req: tapi.KillRequest, ctx: CallContext): Promise<Record<string, never>> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    await this.shims.kill(ns, req.containerId, req.signal, req.all, req.execId);
    return {};
  }

  async get(req: tapi.GetRequest, ctx: CallContext): Promise<tapi.GetResponse> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    const st = await this.shims.state(ns, req.containerId, req.execId);
    return {
      process: {
        containerId: req.containerId,
        id: req.execId || req.containerId,
        pid: st.pid,
        status: st.status as unknown as taskTypes.Status,
        stdin: st.stdin,
        stdout: st.stdout,
        stderr: st.stderr,
        terminal: st.terminal,
        exitStatus: st.exitStatus,
        exitedAt: st.exitedAt,
      },
    };
  }

  async delete(req: tapi.DeleteTaskRequest, ctx: CallContext): Promise<tapi.DeleteResponse> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    const res = await this.shims.deleteTask(ns, req.containerId);
    return { id: req.containerId, pid: res.pid, exitStatus: res.exitStatus, exitedAt: res.exitedAt };
  }

  async deleteProcess(req: tapi.DeleteProcessRequest, ctx: CallContext): Promise<tapi.DeleteResponse> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    const res = await this.shims.deleteTask(ns, req.containerId, req.execId);
    return { id: req.execId, pid: res.pid, exitStatus: res.exitStatus, exitedAt: res.exitedAt };
  }

  async listPids(req: tapi.ListPidsRequest, ctx: CallContext): Promise<tapi.ListPidsResponse> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    const res = await this.shims.pids(ns, req.containerId);
    return { processes: res.processes };
  }

  /** The agent's endpoints on this node's subjects. */
  endpoints(node: string): EndpointSpec[] {
    const s = (m: string) => nodeSubject(node, 'agent', m);
    const unary = <Req, Res>(method: string, type: MessageType<Req>, resType: MessageType<Res>, fn: (req: Req, ctx: CallContext) => Promise<Res | typeof CONTINUE>): EndpointSpec => ({
      method,
      subject: s(method),
      unary: async (data, ctx) => {
        const out = await fn(type.decode(data), ctx);
        return out === CONTINUE ? CONTINUE : resType.encode(out).finish();
      },
    });
    return [
      unary('Create', flotillaAgent.CreateRequest, tapi.CreateTaskResponse, (r, c) => this.create(r, c)),
      unary('Start', tapi.StartRequest, tapi.StartResponse, (r, c) => this.start(r, c)),
      unary('Wait', tapi.WaitRequest, tapi.WaitResponse, (r, c) => this.wait(r, c)),
      unary('Kill', tapi.KillRequest, Empty as unknown as MessageType<Record<string, never>>, (r, c) => this.kill(r, c)),
      unary('Get', tapi.GetRequest, tapi.GetResponse, (r, c) => this.get(r, c)),
      unary('Delete', tapi.DeleteTaskRequest, tapi.DeleteResponse, (r, c) => this.delete(r, c)),
      unary('DeleteProcess', tapi.DeleteProcessRequest, tapi.DeleteResponse, (r, c) => this.deleteProcess(r, c)),
      unary('ListPids', tapi.ListPidsRequest, tapi.ListPidsResponse, (r, c) => this.listPids(r, c)),
    ];
  }
}

