// The node agent's side of the tasks API: containerd's task calls, answered from this
// node's shims. Reached on flotilla.v1.node.<node>.agent.<Method> from the tasks service.
// Each method mirrors containerd's services/tasks local service: the task must exist on
// this node (NotFound "task <id> not found" otherwise), then the shim's answer or error.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Empty, flotillaAgent, runcOptions, tasks as tapi, taskTypes, toTimestamp, type MessageType } from '@flotilla/api';
import { CONTINUE, type CallContext, type EndpointSpec, nodeSubject } from '@flotilla/bus';
import { errInvalidArgument, errNotImplemented, ErrorClass, isNotFound, messageOf, withClass } from '@flotilla/errdefs';
import { parseFilters } from '@flotilla/filters';
import { namespaceRequired } from '@flotilla/identifiers';
import type { ShimManager } from '@flotilla/runtime';

/** How long the agent holds a Wait before answering Continue (the caller asks again). */
const WAIT_HOLD_MS = 5_000;
/** Time kept free before the caller's deadline, so our Continue reaches it in time. */
const HOLD_MARGIN_MS = 2_000;
/** How long Get and List wait for a shim's State (containerd's io.containerd.timeout.task.state). */
const STATE_TIMEOUT_MS = 2_000;

type Unit = Record<string, never>;
const EmptyType = Empty as unknown as MessageType<Unit>;

export interface AgentOptions {
  /** Wait hold (ms) before answering Continue; default 5 s. */
  holdMs?: number;
  /** Scratch space for checkpoints; default the OS temp directory. */
  tmpDir?: string;
  /** Where a failed State of a listed task is reported; default nowhere. */
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export class AgentService {
  /** In-flight shim Waits, shared by repeated (continued) Wait calls for the same process. */
  private readonly waits = new Map<string, Promise<{ exitStatus: number; exitedAt: tapi.WaitResponse['exitedAt'] }>>();
  private readonly holdMs: number;
  private readonly tmpDir: string;
  private readonly log: NonNullable<AgentOptions['log']>;

  constructor(private readonly shims: ShimManager, opts: AgentOptions | number = {}) {
    const o = typeof opts === 'number' ? { holdMs: opts } : opts;
    this.holdMs = o.holdMs ?? WAIT_HOLD_MS;
    this.tmpDir = o.tmpDir ?? os.tmpdir();
    this.log = o.log ?? (() => {});
  }

  private ensure(ns: string, id: string): void {
    // containerd's getTaskFromContainer: codes.NotFound "task %v not found".
    if (!this.shims.has(ns, id)) throw withClass(ErrorClass.NotFound, `task ${id} not found`);
  }

  async create(req: flotillaAgent.CreateRequest, ctx: CallContext): Promise<tapi.CreateTaskResponse> {
    const ns = namespaceRequired(ctx);
    const r = req.request;
    if (!r) throw errInvalidArgument('create request must be set');
    if (!req.spec) throw errInvalidArgument('container spec must be set');
    if (r.checkpoint) throw errNotImplemented('restoring a task from a checkpoint');
    if (this.shims.has(ns, r.containerId)) throw withClass(ErrorClass.AlreadyExists, `task ${r.containerId}: already exists`);
    const { pid } = await this.shims.createTask({
      namespace: ns,
      id: r.containerId,
      bundleSpec: req.spec.value,
      runtime: r.runtimePath || req.runtime,
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
    // Answer Continue before the caller gives up on us, so it asks again instead of failing.
    const hold = ctx.deadline === undefined ? this.holdMs : Math.max(0, Math.min(this.holdMs, ctx.deadline - Date.now() - HOLD_MARGIN_MS));
    let timer: NodeJS.Timeout | undefined;
    const held = new Promise<typeof CONTINUE>((resolve) => (timer = setTimeout(() => resolve(CONTINUE), hold)));
    try {
      return await Promise.race([p, held]);
    } finally {
      clearTimeout(timer);
    }
  }

  async kill(req: tapi.KillRequest, ctx: CallContext): Promise<Unit> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    await this.shims.kill(ns, req.containerId, req.signal, req.all, req.execId);
    return {};
  }

  /**
   * The process as Get and List show it, as containerd's getProcessState: NotFound (a shim
   * gone meanwhile) is thrown; any other State failure, a shim not answering within 2 s
   * included, is logged and the process shown with status UNKNOWN, so one stuck shim does
   * not fail or stall a whole listing.
   */
  private async process(ns: string, id: string, execId: string): Promise<taskTypes.Process> {
    let st: Awaited<ReturnType<ShimManager['state']>>;
    try {
      st = await this.shims.state(ns, id, execId, STATE_TIMEOUT_MS);
    } catch (err) {
      if (isNotFound(err)) throw err;
      this.log('get state', { namespace: ns, id, execId, error: messageOf(err) });
      return { ...taskTypes.Process.fromPartial({}), containerId: id, id: execId || id, status: taskTypes.Status.UNKNOWN };
    }
    return {
      containerId: id,
      id: execId || id,
      pid: st.pid,
      status: st.status as unknown as taskTypes.Status,
      stdin: st.stdin,
      stdout: st.stdout,
      stderr: st.stderr,
      terminal: st.terminal,
      exitStatus: st.exitStatus,
      exitedAt: st.exitedAt,
    };
  }

  async get(req: tapi.GetRequest, ctx: CallContext): Promise<tapi.GetResponse> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    return { process: await this.process(ns, req.containerId, req.execId) };
  }

  /** This node's tasks in the namespace (containerd lists every runtime's tasks; ids in order). */
  async list(_req: tapi.ListTasksRequest, ctx: CallContext): Promise<tapi.ListTasksResponse> {
    const ns = namespaceRequired(ctx);
    const tasks: taskTypes.Process[] = [];
    for (const id of this.shims.list(ns).sort()) {
      try {
        tasks.push(await this.process(ns, id, ''));
      } catch (err) {
        if (!isNotFound(err)) throw err; // deleted meanwhile
      }
    }
    return { tasks };
  }

  async delete(req: tapi.DeleteTaskRequest, ctx: CallContext): Promise<tapi.DeleteResponse> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    const res = await this.shims.deleteTask(ns, req.containerId);
    // containerd's Delete leaves id empty.
    return { id: '', pid: res.pid, exitStatus: res.exitStatus, exitedAt: res.exitedAt };
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

  async exec(req: tapi.ExecProcessRequest, ctx: CallContext): Promise<Unit> {
    const ns = namespaceRequired(ctx);
    if (!req.execId) throw errInvalidArgument('exec id cannot be empty');
    this.ensure(ns, req.containerId);
    if (!req.spec) throw errInvalidArgument('exec process spec must be set');
    await this.shims.exec(ns, req.containerId, req.execId, {
      spec: req.spec, terminal: req.terminal, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr,
    });
    return {};
  }

  async resizePty(req: tapi.ResizePtyRequest, ctx: CallContext): Promise<Unit> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    await this.shims.resizePty(ns, req.containerId, req.width, req.height, req.execId);
    return {};
  }

  async closeIO(req: tapi.CloseIORequest, ctx: CallContext): Promise<Unit> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    if (req.stdin) await this.shims.closeIO(ns, req.containerId, req.execId);
    return {};
  }

  async pause(req: tapi.PauseTaskRequest, ctx: CallContext): Promise<Unit> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    await this.shims.pause(ns, req.containerId);
    return {};
  }

  async resume(req: tapi.ResumeTaskRequest, ctx: CallContext): Promise<Unit> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    await this.shims.resume(ns, req.containerId);
    return {};
  }

  async update(req: tapi.UpdateTaskRequest, ctx: CallContext): Promise<Unit> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    await this.shims.update(ns, req.containerId, req.resources, req.annotations);
    return {};
  }

  /**
   * Checkpoint through the shim (runc checkpoint, i.e. CRIU). With an image path in the
   * runc CheckpointOptions the image stays there, as in containerd. Without one containerd
   * would also store the image in the content store; the agent has no content writer yet,
   * so it checkpoints into scratch space and then refuses with NotImplemented.
   */
  async checkpoint(req: tapi.CheckpointTaskRequest, ctx: CallContext): Promise<tapi.CheckpointTaskResponse> {
    const ns = namespaceRequired(ctx);
    this.ensure(ns, req.containerId);
    let imagePath = '';
    if (req.options?.typeUrl.endsWith('containerd.runc.v1.CheckpointOptions')) {
      imagePath = runcOptions.CheckpointOptions.decode(req.options.value).imagePath;
    }
    if (imagePath) {
      await this.shims.checkpoint(ns, req.containerId, imagePath, req.options);
      return { descriptors: [] };
    }
    const scratch = await fs.mkdtemp(path.join(this.tmpDir, 'ctd-checkpoint'));
    try {
      await this.shims.checkpoint(ns, req.containerId, scratch, req.options);
    } finally {
      await fs.rm(scratch, { recursive: true, force: true });
    }
    throw errNotImplemented('storing a checkpoint in the content store; give an image path (ctr tasks checkpoint --image-path)');
  }

  /** containerd's Metrics over this node's tasks of the namespace, filtered by id, namespace, runtime. */
  async metrics(req: tapi.MetricsRequest, ctx: CallContext): Promise<tapi.MetricsResponse> {
    const ns = namespaceRequired(ctx);
    const filter = parseFilters(req.filters);
    const metrics: tapi.MetricsResponse['metrics'] = [];
    for (const id of this.shims.list(ns).sort()) {
      const match = filter.match((fp) => {
        if (fp[0] === 'id') return [id, true];
        if (fp[0] === 'namespace') return [ns, true];
        return ['', false];
      });
      if (!match) continue;
      const collected = toTimestamp();
      try {
        metrics.push({ timestamp: collected, id, data: await this.shims.stats(ns, id) });
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
    return { metrics };
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
      unary('Kill', tapi.KillRequest, EmptyType, (r, c) => this.kill(r, c)),
      unary('Get', tapi.GetRequest, tapi.GetResponse, (r, c) => this.get(r, c)),
      unary('List', tapi.ListTasksRequest, tapi.ListTasksResponse, (r, c) => this.list(r, c)),
      unary('Delete', tapi.DeleteTaskRequest, tapi.DeleteResponse, (r, c) => this.delete(r, c)),
      unary('DeleteProcess', tapi.DeleteProcessRequest, tapi.DeleteResponse, (r, c) => this.deleteProcess(r, c)),
      unary('ListPids', tapi.ListPidsRequest, tapi.ListPidsResponse, (r, c) => this.listPids(r, c)),
      unary('Exec', tapi.ExecProcessRequest, EmptyType, (r, c) => this.exec(r, c)),
      unary('ResizePty', tapi.ResizePtyRequest, EmptyType, (r, c) => this.resizePty(r, c)),
      unary('CloseIO', tapi.CloseIORequest, EmptyType, (r, c) => this.closeIO(r, c)),
      unary('Pause', tapi.PauseTaskRequest, EmptyType, (r, c) => this.pause(r, c)),
      unary('Resume', tapi.ResumeTaskRequest, EmptyType, (r, c) => this.resume(r, c)),
      unary('Update', tapi.UpdateTaskRequest, EmptyType, (r, c) => this.update(r, c)),
      unary('Checkpoint', tapi.CheckpointTaskRequest, tapi.CheckpointTaskResponse, (r, c) => this.checkpoint(r, c)),
      unary('Metrics', tapi.MetricsRequest, tapi.MetricsResponse, (r, c) => this.metrics(r, c)),
    ];
  }
}
