// The node agent's shim manager: starts containerd-shim-runc-v2 as containerd 1.6's runtime
// v2 does (bundle layout, arguments, environment, log FIFO, cleanup with `shim delete`),
// drives it over ttrpc (containerd.task.v2.Task), and serves the ttrpc Events endpoint the
// shims forward their task events to.
import { appendFileSync, createWriteStream, readFileSync, writeFileSync, type WriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import type net from 'node:net';
import path from 'node:path';
import {
  Any, Empty, evTask, packAny, shim as sapi, taskTypes, toTimestamp, ttrpcEvents, type MessageType, type Mount, type Timestamp,
} from '@flotilla/api';
import {
  ContainerdError, ErrorClass, classOf, errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound, isNotFound, isUnavailable,
  messageOf,
} from '@flotilla/errdefs';
import { validateIdentifier } from '@flotilla/identifiers';
import { TtrpcClient, TtrpcServer, isClosed } from '@flotilla/ttrpc';
import { type Bundle, FifoPool, bundleAt, createBundle, deleteBundle, openShimLog, retireBundle } from './bundle.js';
import { Spawner } from './spawner.js';

const TASK_SERVICE = 'containerd.task.v2.Task';
const EVENTS_SERVICE = 'containerd.services.events.ttrpc.v1.Events';
/** Tasks whose claimed exits are kept in memory (see ShimManager.claimed). */
const MAX_CLAIMED_TASKS = 10_000;
/** containerd's namespace header on ttrpc calls (namespaces.TTRPCHeader). */
const NS_HEADER = 'containerd-namespace-ttrpc';
export const DEFAULT_RUNTIME = 'io.containerd.runc.v2';
const DEFAULT_SHIM = 'containerd-shim-runc-v2';
/** containerd's io.containerd.timeout.shim.{shutdown,cleanup,load}. */
const SHUTDOWN_TIMEOUT_MS = 3_000;
const CLEANUP_TIMEOUT_MS = 5_000;
const LOAD_TIMEOUT_MS = 5_000;
/** `shim start` only forks the daemon and answers its address; longer means it is stuck. */
const START_TIMEOUT_MS = 30_000;

export interface ShimEvent {
  topic: string;
  namespace: string;
  /** The event as google.protobuf.Any (typeUrl e.g. containerd.events.TaskExit). */
  event: Any | undefined;
  timestamp: Timestamp | undefined;
}

export interface ShimManagerOptions {
  /** Bundles live in <stateDir>/<namespace>/<id>; a restarted agent finds its shims there. */
  stateDir: string;
  /** Work directories live in <runDir>/work/<namespace>/<id>; default <stateDir>/.work. */
  runDir?: string;
  /** Our ttrpc events server socket, passed to shims as TTRPC_ADDRESS. */
  eventsSocket: string;
  /** Passed to shims as -address (the gateway socket); they hash it into their socket path. */
  grpcAddress: string;
  /** The binary for io.containerd.runc.v2; default containerd-shim-runc-v2 from PATH. */
  shimBinary?: string;
  /** Passed as -publish-binary. The shims publish through TTRPC_ADDRESS, so it is never run. */
  publishBinary?: string;
  /** If set, every shim's log lines are appended to <logDir>/shims.log, each prefixed with `<namespace>/<id>: `. */
  logDir?: string;
  /** Our log: shim log lines (when no logDir) and cleanup warnings. Default: stderr. */
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  /** Every event a shim forwards, and the exit/delete events of shims that died. */
  onEvent: (e: ShimEvent) => void | Promise<void>;
}

export interface CreateTaskOptions {
  namespace: string;
  id: string;
  /** The OCI runtime spec JSON, written as the bundle's config.json. */
  bundleSpec: Uint8Array;
  /** Mounts the shim mounts on <bundle>/rootfs before runc create. */
  rootfs: Mount[];
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  /** Runtime options (e.g. containerd.runc.v1.Options), given to the shim on start and create. */
  options?: Any;
  /** containerd runtime name (io.containerd.runc.v2) or an absolute shim path. */
  runtime?: string;
}

/** The skeleton's create options; `spec` is `bundleSpec`. */

export interface ExecOptions {
  /** The process spec (OCI Process JSON) as Any, as containerd sends it. */
  spec: Any;
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
}

export interface TaskExitInfo {
  pid: number;
  exitStatus: number;
  exitedAt: Timestamp | undefined;
}

interface ShimHandle {
  bundle: Bundle;
  /** The shim binary, also recorded in the bundle as shim-binary-path. */
  binary: string;
  client: TtrpcClient;
  log?: net.Socket;
  /** Set when we end the connection on purpose (delete, close): no dead-shim cleanup then. */
  closing: boolean;
  /** A whole-task delete is in progress. */
  deleting?: boolean;
  /** Set when the shim died: resolves with the exit reported for its task after cleanup. */
  gone?: Promise<TaskExitInfo>;
}

function defaultLog(msg: string, fields?: Record<string, unknown>): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), msg, ...fields })}\n`);
}

function wrap(err: unknown, context: string): ContainerdError {
  return new ContainerdError(classOf(err), `${context}: ${messageOf(err)}`, { cause: err });
}

export class ShimManager {
  private readonly shims = new Map<string, ShimHandle>();
  /** Keys of tasks being created, so two creates of one id cannot race. */
  private readonly creating = new Set<string>();
  /**
   * Exits this process has claimed, per task (`key(ns, id)` -> exit keys), beside the
   * bundle's `exits` file: a claim must still hold once the bundle is removed (a dead
   * shim's cleanup removes it, and an exit the shim sent before dying may be read after).
   * A new task of the same id starts with none; the oldest tasks' are forgotten past
   * MAX_CLAIMED_TASKS.
   */
  private readonly claimed = new Map<string, Set<string>>();
  private readonly events = new TtrpcServer();
  private readonly workRoot: string;
  private readonly log: (msg: string, fields?: Record<string, unknown>) => void;
  /** Log FIFOs for new bundles; in the state directory so a rename moves one into a bundle. */
  private readonly fifos: FifoPool;
  /** Starts shim binaries and mkfifo without forking the agent. */
  private readonly spawner: Spawner;
  /** The node's shims.log, opened at the first shim log it copies (with a logDir). */
  private shimLog: WriteStream | undefined;
  /** Removals of retired bundles still running after their task's Delete answered. */
  private readonly deletions = new Set<Promise<void>>();

  constructor(private readonly opts: ShimManagerOptions) {
    this.workRoot = opts.runDir ? path.join(opts.runDir, 'work') : path.join(opts.stateDir, '.work');
    this.log = opts.log ?? defaultLog;
    this.spawner = new Spawner(opts.runDir ? path.join(opts.runDir, 'spawn') : path.join(opts.stateDir, '.spawn'));
    this.fifos = new FifoPool(path.join(opts.stateDir, '.fifos'), 16, this.spawner);
  }

  /** Starts the events server; shims cannot start before it listens (they dial it at start). */
  async start(): Promise<void> {
    await fs.mkdir(this.opts.stateDir, { recursive: true, mode: 0o711 });
    await fs.mkdir(this.workRoot, { recursive: true, mode: 0o711 });
    await fs.mkdir(path.dirname(this.opts.eventsSocket), { recursive: true, mode: 0o711 });
    if (this.opts.logDir) await fs.mkdir(this.opts.logDir, { recursive: true });
    await this.fifos.start();
    this.events.register(EVENTS_SERVICE, 'Forward', async (payload) => {
      const env = ttrpcEvents.ForwardRequest.decode(payload).envelope;
      if (!env) throw errInvalidArgument('forward: envelope must be set');
      if (env.topic === '/tasks/exit' && env.event) {
        // A shim re-sends an exit it could not deliver while we were down; we may have
        // reported it already from the task's state when we reconnected.
        const ex = evTask.TaskExit.decode(env.event.value);
        if (!this.claimExit(env.namespace, ex.containerId, ex.id === ex.containerId ? '' : ex.id, ex.pid)) return Empty.encode({}).finish();
      }
      await this.opts.onEvent({ topic: env.topic, namespace: env.namespace, event: env.event, timestamp: env.timestamp });
      return Empty.encode({}).finish();
    });
    await this.events.listen(this.opts.eventsSocket, 0o600);
  }

  bundlePath(namespace: string, id: string): string {
    return bundleAt(this.opts.stateDir, namespace, id).path;
  }

  has(namespace: string, id: string): boolean {
    return this.shims.has(key(namespace, id));
  }

  /** Ids of this namespace's tasks with a live shim. */
  list(namespace: string): string[] {
    return [...this.shims.values()].filter((s) => s.bundle.namespace === namespace).map((s) => s.bundle.id);
  }

  /**
   * Reconnects to shims still running from an earlier life of this agent, from each
   * bundle's `address` file. Bundles whose shim is gone are cleaned up as containerd does
   * (`shim delete`, then the bundle is removed). Returns the tasks reconnected.
   */
  async loadExisting(): Promise<{ namespace: string; id: string }[]> {
    const found: { namespace: string; id: string }[] = [];
    for (const ns of await readdirOrEmpty(this.opts.stateDir)) {
      if (ns.startsWith('.')) continue;
      const nsDir = path.join(this.opts.stateDir, ns);
      for (const id of await readdirOrEmpty(nsDir)) {
        if (id.startsWith('.')) {
          // A bundle whose removal was interrupted (renamed to .<id> first).
          await deleteBundle(path.join(nsDir, id)).catch((err) => this.log('remove interrupted bundle', { path: path.join(nsDir, id), error: messageOf(err) }));
          continue;
        }
        if (this.shims.has(key(ns, id))) continue;
        const bundle = bundleAt(this.opts.stateDir, ns, id);
        const binary = (await fs.readFile(path.join(bundle.path, 'shim-binary-path'), 'utf8').catch(() => '')) || this.binaryFor(undefined);
        try {
          await this.reconnect(bundle, binary);
          found.push({ namespace: ns, id });
        } catch (err) {
          this.log('cleaning up after shim that is gone', { namespace: ns, id, error: messageOf(err) });
          await this.afterDeadShim(bundle, binary);
          continue;
        }
        await this.reportMissedExit(bundle).catch((err) => this.log('state after reconnect', { namespace: ns, id, error: messageOf(err) }));
      }
    }
    return found;
  }

  private async reconnect(bundle: Bundle, binary: string): Promise<void> {
    const address = (await fs.readFile(path.join(bundle.path, 'address'), 'utf8')).trim();
    if (!address) throw new Error('no shim address');
    const client = await TtrpcClient.connect(address);
    let log: net.Socket | undefined;
    try {
      log = await openShimLog(bundle);
      const h: ShimHandle = { bundle, binary, client, log, closing: false };
      this.drainLog(h);
      await this.call(h, 'Connect', sapi.ConnectRequest, sapi.ConnectResponse, { id: bundle.id }, LOAD_TIMEOUT_MS);
      this.track(h);
    } catch (err) {
      client.close();
      log?.destroy();
      throw err;
    }
  }

  /** Starts a shim for the task and creates the task in it (runc create). */
  async createTask(req: CreateTaskOptions): Promise<{ pid: number }> {
    const { namespace: ns, id } = req;
    try {
      validateIdentifier(id);
    } catch (err) {
      throw wrap(err, `invalid task id ${id}`);
    }
    const k = key(ns, id);
    if (this.shims.has(k) || this.creating.has(k)) throw errAlreadyExists(`task ${id}`);
    this.creating.add(k);
    this.claimed.delete(k);
    try {
      const binary = this.binaryFor(req.runtime);
      const bundle = await this.newBundle(ns, id, req.bundleSpec);
      let h: ShimHandle;
      try {
        h = await this.startShim(bundle, binary, req.options);
      } catch (err) {
        await deleteBundle(bundle.path).catch((e) => this.log('remove bundle', { namespace: ns, id, error: messageOf(e) }));
        throw wrap(err, 'failed to start shim');
      }
      try {
        const res = await this.call(h, 'Create', sapi.CreateTaskRequest, sapi.CreateTaskResponse, {
          id,
          bundle: bundle.path,
          rootfs: req.rootfs,
          terminal: req.terminal,
          stdin: req.stdin,
          stdout: req.stdout,
          stderr: req.stderr,
          options: req.options,
        });
        this.track(h);
        return { pid: res.pid };
      } catch (err) {
        await this.teardown(h, true);
        throw wrap(err, 'failed to create shim task');
      }
    } finally {
      this.creating.delete(k);
    }
  }

  async startTask(namespace: string, id: string, execId = ''): Promise<{ pid: number }> {
    const res = await this.call(this.get(namespace, id), 'Start', sapi.StartRequest, sapi.StartResponse, { id, execId });
    return { pid: res.pid };
  }

  /** Resolves when the process exits (held as long as it runs). */
  async wait(namespace: string, id: string, execId = ''): Promise<{ exitStatus: number; exitedAt: Timestamp | undefined }> {
    const h = this.get(namespace, id);
    try {
      const res = await this.call(h, 'Wait', sapi.WaitRequest, sapi.WaitResponse, { id, execId });
      return { exitStatus: res.exitStatus, exitedAt: res.exitedAt };
    } catch (err) {
      // The shim died while we waited: its task ends with what the cleanup reported.
      if (!execId && h.gone && isUnavailable(err)) return h.gone;
      throw err;
    }
  }

  /** The task's cgroup statistics as the shim reports them (io.containerd.cgroups.v1/v2.Metrics as Any). */
  async stats(namespace: string, id: string): Promise<Any | undefined> {
    return (await this.call(this.get(namespace, id), 'Stats', sapi.StatsRequest, sapi.StatsResponse, { id })).stats;
  }

  /** Updates the task's resources (an OCI LinuxResources JSON as Any) and annotations. */
  async update(namespace: string, id: string, resources: Any | undefined, annotations: Record<string, string>): Promise<void> {
    await this.call(this.get(namespace, id), 'Update', sapi.UpdateTaskRequest, Empty, { id, resources, annotations });
  }

  /** Checkpoints the task (runc checkpoint through CRIU) into `imagePath`. */
  async checkpoint(namespace: string, id: string, imagePath: string, options: Any | undefined): Promise<void> {
    await this.call(this.get(namespace, id), 'Checkpoint', sapi.CheckpointTaskRequest, Empty, { id, path: imagePath, options });
  }

  async kill(namespace: string, id: string, signal: number, all = false, execId = ''): Promise<void> {
    await this.call(this.get(namespace, id), 'Kill', sapi.KillRequest, Empty, { id, execId, signal, all });
  }

  /** The process's state; NotFound once its shim's connection is gone (deleted meanwhile), as containerd's shimTask.State. */
  async state(namespace: string, id: string, execId = '', timeoutMs?: number): Promise<sapi.StateResponse> {
    try {
      return await this.call(this.get(namespace, id), 'State', sapi.StateRequest, sapi.StateResponse, { id, execId }, timeoutMs);
    } catch (err) {
      if (isClosed(err)) throw errNotFound();
      throw err;
    }
  }

  async pids(namespace: string, id: string): Promise<sapi.PidsResponse> {
    return this.call(this.get(namespace, id), 'Pids', sapi.PidsRequest, sapi.PidsResponse, { id });
  }

  /** Adds an exec process to a running task; start it with startTask(ns, id, execId). */
  async exec(namespace: string, id: string, execId: string, o: ExecOptions): Promise<void> {
    const h = this.get(namespace, id);
    await this.call(h, 'Exec', sapi.ExecProcessRequest, Empty, { id, execId, ...o });
    // Remembered so that a restarted agent can look for exec exits it missed.
    try {
      appendFileSync(path.join(h.bundle.path, 'execs'), execId + '\n', { mode: 0o600 });
    } catch (err) {
      this.log('record exec', { namespace, id, execId, error: messageOf(err) });
    }
  }

  async resizePty(namespace: string, id: string, width: number, height: number, execId = ''): Promise<void> {
    await this.call(this.get(namespace, id), 'ResizePty', sapi.ResizePtyRequest, Empty, { id, execId, width, height });
  }

  async closeIO(namespace: string, id: string, execId = ''): Promise<void> {
    await this.call(this.get(namespace, id), 'CloseIO', sapi.CloseIORequest, Empty, { id, execId, stdin: true });
  }

  async pause(namespace: string, id: string): Promise<void> {
    await this.call(this.get(namespace, id), 'Pause', sapi.PauseRequest, Empty, { id });
  }

  async resume(namespace: string, id: string): Promise<void> {
    await this.call(this.get(namespace, id), 'Resume', sapi.ResumeRequest, Empty, { id });
  }

  /**
   * Deletes an exec process, or the task: Delete in the shim, then Shutdown, then
   * `shim delete` cleanup and removal of the bundle, as containerd's TaskManager.Delete.
   */
  async deleteTask(namespace: string, id: string, execId = ''): Promise<TaskExitInfo> {
    const h = this.get(namespace, id);
    if (execId) {
      const res = await this.call(h, 'Delete', sapi.DeleteRequest, sapi.DeleteResponse, { id, execId });
      return { pid: res.pid, exitStatus: res.exitStatus, exitedAt: res.exitedAt };
    }
    if (h.deleting) throw errFailedPrecondition(`task ${id}: delete in progress`);
    h.deleting = true;
    let res: sapi.DeleteResponse;
    try {
      res = await this.call(h, 'Delete', sapi.DeleteRequest, sapi.DeleteResponse, { id, execId: '' });
    } catch (err) {
      h.deleting = false;
      // A shim that lost its task is torn down all the same (containerd does too). One whose
      // connection dropped is being cleaned up by the dead-shim path already (closing is set).
      if (isNotFound(err) && !h.closing) await this.teardown(h, false);
      throw wrap(err, 'failed to delete task');
    }
    // The shim's Delete ran runc delete and unmounted the rootfs: no `shim delete` needed.
    // The bundle is renamed out of use before we answer and its files removed after.
    if (!h.closing) await this.teardown(h, false, false, true);
    return { pid: res.pid, exitStatus: res.exitStatus, exitedAt: res.exitedAt };
  }

  /**
   * Stops the events server and drops shim connections. Shims and their containers keep
   * running; a new ShimManager on the same stateDir picks them up with loadExisting().
   */
  async close(): Promise<void> {
    for (const h of this.shims.values()) {
      h.closing = true;
      h.client.close();
      h.log?.destroy();
    }
    this.shims.clear();
    this.spawner.close();
    this.shimLog?.end();
    this.shimLog = undefined;
    await this.events.close();
  }

  // --- internals ---

  private get(namespace: string, id: string): ShimHandle {
    const h = this.shims.get(key(namespace, id));
    if (!h) throw errNotFound(`task ${id}`);
    return h;
  }

  private async call<Req, Res>(h: ShimHandle, method: string, reqType: MessageType<Req>, resType: MessageType<Res>, req: Partial<Req>, timeoutMs?: number): Promise<Res> {
    const out = await h.client.call(TASK_SERVICE, method, reqType.encode(reqType.fromPartial(req)).finish(), {
      metadata: { [NS_HEADER]: h.bundle.namespace },
      timeoutMs,
    });
    return resType.decode(out);
  }

  /** containerd's runtime name -> shim binary (shim.BinaryName), or an absolute path as given. */
  private binaryFor(runtime: string | undefined): string {
    if (!runtime || runtime === DEFAULT_RUNTIME) return this.opts.shimBinary ?? DEFAULT_SHIM;
    if (runtime.includes('/')) {
      if (!path.isAbsolute(runtime)) throw errInvalidArgument(`runtime path "${runtime}" must be absolute`);
      return runtime;
    }
    const parts = runtime.split('.');
    if (parts.length < 2 || parts.some((p) => !p)) {
      throw errInvalidArgument(`invalid runtime name ${runtime}, correct runtime name should be either format like \`io.containerd.runc.v1\` or a full path to the binary`);
    }
    return `containerd-shim-${parts[parts.length - 2]}-${parts[parts.length - 1]}`;
  }

  private async newBundle(ns: string, id: string, spec: Uint8Array): Promise<Bundle> {
    try {
      return await createBundle(this.opts.stateDir, this.workRoot, ns, id, spec);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    // A bundle of a task we do not track: a live shim not loaded (refuse), or a leftover.
    const bundle = bundleAt(this.opts.stateDir, ns, id);
    const address = await fs.readFile(path.join(bundle.path, 'address'), 'utf8').catch(() => '');
    if (address.trim()) {
      const probe = await TtrpcClient.connect(address.trim()).catch(() => undefined);
      if (probe) {
        probe.close();
        throw errAlreadyExists(`task ${id}: a shim is running for it; call loadExisting()`);
      }
    }
    const binary = (await fs.readFile(path.join(bundle.path, 'shim-binary-path'), 'utf8').catch(() => '')) || this.binaryFor(undefined);
    await this.cleanupShim(bundle, binary);
    return createBundle(this.opts.stateDir, this.workRoot, ns, id, spec);
  }

  /** `<shim> -namespace .. -address .. -publish-binary .. -id .. start` in the bundle. */
  private async startShim(bundle: Bundle, binary: string, options: Any | undefined): Promise<ShimHandle> {
    const log = await openShimLog(bundle, this.fifos);
    try {
      // Recorded for cleanup by a restarted agent, as containerd does for restore. Written
      // before the start (a bundle without a shim is cleaned up the same way) and at once:
      // a small file, cheaper than a trip through libuv's thread pool.
      writeFileSync(path.join(bundle.path, 'shim-binary-path'), binary, { mode: 0o600 });
      const address = await this.runShim(binary, bundle, ['-id', bundle.id, 'start'], options ? Any.encode(options).finish() : undefined, START_TIMEOUT_MS)
        .then(({ code, stdout, stderr, error }) => {
          if (error) throw error;
          const out = (stdout + stderr).trim();
          if (code !== 0 || !stdout.trim()) throw new ContainerdError(ErrorClass.Unknown, `start failed: ${out}: exit status ${code}`);
          return stdout.trim();
        });
      const client = await TtrpcClient.connect(address);
      const h: ShimHandle = { bundle, binary, client, log, closing: false };
      this.drainLog(h);
      return h;
    } catch (err) {
      log.destroy();
      throw err;
    }
  }

  /**
   * Runs the shim binary as containerd's shim.Command does: cwd, flags, env, its own session.
   * Through the spawner's shell, so the agent is not forked for it (see spawner.ts).
   */
  private async runShim(binary: string, bundle: Bundle, args: string[], stdin: Uint8Array | undefined, timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string; error?: Error }> {
    const argv = ['-namespace', bundle.namespace, '-address', this.opts.grpcAddress, '-publish-binary', this.opts.publishBinary ?? '/bin/false', ...args];
    const r = await this.spawner.run(binary, argv, {
      cwd: bundle.path,
      env: { GOMAXPROCS: '2', TTRPC_ADDRESS: this.opts.eventsSocket },
      stdin,
      timeoutMs,
    });
    if (r.error) {
      const error = r.error.code === 'ENOENT' ? errNotFound(`runtime binary not installed "${binary}"`) : r.error;
      return { code: null, stdout: '', stderr: '', error };
    }
    return { code: r.code, stdout: r.stdout.toString('latin1'), stderr: r.stderr };
  }

  /**
   * Ends a shim: Delete (when the task is still in it), Shutdown, close the connection, then
   * bundle removal. With `shimDelete`, or when Shutdown failed, `shim delete` runs first
   * (containerd's cleanupAfterDeadShim). Without it this is containerd 1.6's shimTask.delete
   * after a successful task Delete: the shim has run `runc delete` and unmounted the rootfs,
   * so spawning the shim binary again would only repeat that.
   */
  private async teardown(h: ShimHandle, deleteTask: boolean, shimDelete = true, background = false): Promise<sapi.DeleteResponse | undefined> {
    h.closing = true;
    const { namespace, id } = h.bundle;
    if (deleteTask) {
      await this.call(h, 'Delete', sapi.DeleteRequest, sapi.DeleteResponse, { id, execId: '' }).catch(() => {});
    }
    let shutDown = true;
    try {
      await this.call(h, 'Shutdown', sapi.ShutdownRequest, Empty, { id, now: false }, SHUTDOWN_TIMEOUT_MS);
    } catch (err) {
      // The shim exits while answering Shutdown: a closed connection is the expected end.
      if (!isUnavailable(err)) {
        shutDown = false;
        this.log('failed to shutdown shim task', { namespace, id, error: messageOf(err) });
      }
    }
    h.client.close();
    if (this.shims.get(key(namespace, id)) === h) this.shims.delete(key(namespace, id));
    let res: sapi.DeleteResponse | undefined;
    if (shimDelete || !shutDown) res = await this.cleanupShim(h.bundle, h.binary);
    else await this.removeBundle(h.bundle, undefined, background);
    h.log?.destroy();
    return res;
  }

  /**
   * Bundle removal (unmounting what is left) and the shim's socket if it left it behind; never
   * throws. With `background`, returns once the bundle is renamed out of use (retireBundle)
   * and removes its files after (settled() waits for that).
   */
  private async removeBundle(bundle: Bundle, address?: string, background = false): Promise<void> {
    const { namespace, id } = bundle;
    const failed = (err: unknown) => this.log('failed to delete bundle', { namespace, id, error: messageOf(err) });
    address ??= readAddress(bundle);
    const socket = removeDeadSocket(address);
    if (!background) {
      await Promise.all([deleteBundle(bundle.path).catch(failed), socket]);
      return;
    }
    const retired = await retireBundle(bundle.path).catch((err) => void failed(err));
    await socket;
    if (!retired) return;
    const p: Promise<void> = retired.deleted.catch(failed).finally(() => this.deletions.delete(p));
    this.deletions.add(p);
  }

  /** Resolves once the files of every bundle retired so far are removed (or failed to be). */
  async settled(): Promise<void> {
    while (this.deletions.size > 0) await Promise.all([...this.deletions]);
  }

  /** `shim delete` (runc delete --force, unmount rootfs) and bundle removal; never throws. */
  private async cleanupShim(bundle: Bundle, binary: string): Promise<sapi.DeleteResponse | undefined> {
    const { namespace, id } = bundle;
    let res: sapi.DeleteResponse | undefined;
    const exists = await fs.lstat(bundle.path).then(() => true, () => false);
    const address = exists ? readAddress(bundle) : '';
    if (exists) {
      const out = await this.runShim(binary, bundle, ['-id', id, '-bundle', bundle.path, 'delete'], undefined, CLEANUP_TIMEOUT_MS);
      if (out.error || out.code !== 0) {
        this.log('failed to delete', { namespace, id, error: out.error ? messageOf(out.error) : `${out.stderr.trim()}: exit status ${out.code}` });
      } else {
        if (out.stderr.trim()) this.log('cleanup warnings', { namespace, id, warnings: out.stderr.trim() });
        try {
          res = sapi.DeleteResponse.decode(Buffer.from(out.stdout, 'latin1'));
        } catch (err) {
          this.log('shim delete: bad response', { namespace, id, error: messageOf(err) });
        }
      }
    }
    await this.removeBundle(bundle, address);
    return res;
  }

  private track(h: ShimHandle): void {
    const k = key(h.bundle.namespace, h.bundle.id);
    this.shims.set(k, h);
    h.client.onClose(() => {
      if (h.closing) return;
      h.closing = true;
      if (this.shims.get(k) === h) this.shims.delete(k);
      h.gone = this.afterDeadShim(h.bundle, h.binary, h).catch((err) => {
        this.log('cleanup after dead shim', { namespace: h.bundle.namespace, id: h.bundle.id, error: messageOf(err) });
        return { pid: 0, exitStatus: 255, exitedAt: toTimestamp() };
      });
    });
  }

  /**
   * The shim is gone (its connection dropped without us asking, or it was not there when we
   * came back): clean up and report the task exited and deleted, as containerd's
   * cleanupAfterDeadShim does. The exit is not reported again if it already was.
   */
  private async afterDeadShim(bundle: Bundle, binary: string, h?: ShimHandle): Promise<TaskExitInfo> {
    const { namespace, id } = bundle;
    this.log('shim disconnected', { namespace, id });
    const reported = readExits(bundle);
    const res = await this.cleanupShim(bundle, binary);
    h?.log?.destroy();
    const pid = res?.pid ?? 0;
    const exitStatus = res ? res.exitStatus : 255;
    const exitedAt = res?.exitedAt ?? toTimestamp();
    if (!reported.has(exitKey('', pid)) && this.claimExit(namespace, id, '', pid)) {
      await this.opts.onEvent({
        topic: '/tasks/exit',
        namespace,
        event: packAny('containerd.events.TaskExit', evTask.TaskExit, { containerId: id, id, pid, exitStatus, exitedAt }),
        timestamp: toTimestamp(),
      });
    }
    await this.opts.onEvent({
      topic: '/tasks/delete',
      namespace,
      event: packAny('containerd.events.TaskDelete', evTask.TaskDelete, { containerId: id, id: '', pid, exitStatus, exitedAt }),
      timestamp: toTimestamp(),
    });
    return { pid, exitStatus, exitedAt };
  }

  /**
   * Records that the exit of process (execId, pid) of the task is being reported; false when
   * it was already. Kept in the bundle (file `exits`) so it survives our restarts, and in
   * memory so it survives the bundle's removal. Synchronous, so two reporters (the shim
   * re-sending, our state check, a dead shim's cleanup) cannot both win.
   */
  private claimExit(namespace: string, id: string, execId: string, pid: number): boolean {
    const k = key(namespace, id);
    const ek = exitKey(execId, pid);
    let mine = this.claimed.get(k);
    if (mine?.has(ek)) return false;
    if (!mine) {
      if (this.claimed.size >= MAX_CLAIMED_TASKS) this.claimed.delete(this.claimed.keys().next().value!);
      this.claimed.set(k, (mine = new Set()));
    }
    mine.add(ek);
    const bundle = bundleAt(this.opts.stateDir, namespace, id);
    if (readExits(bundle).has(ek)) return false;
    try {
      appendFileSync(path.join(bundle.path, 'exits'), ek + '\n', { mode: 0o600 });
    } catch {
      // No bundle (a task we do not own): nothing to remember it in; report it.
    }
    return true;
  }

  /**
   * After reconnecting: a process (init or a recorded exec) that exited while we were away
   * and whose exit nobody reported is reported now, once.
   */
  private async reportMissedExit(bundle: Bundle): Promise<void> {
    const { namespace, id } = bundle;
    let execs: string[] = [];
    try {
      execs = [...new Set(readFileSync(path.join(bundle.path, 'execs'), 'utf8').split('\n').filter(Boolean))];
    } catch {
      // no execs recorded
    }
    for (const execId of ['', ...execs]) {
      let st: sapi.StateResponse;
      try {
        st = await this.state(namespace, id, execId);
      } catch (err) {
        if (isNotFound(err)) continue; // an exec deleted since
        throw err;
      }
      if (st.status !== taskTypes.Status.STOPPED) continue;
      if (!this.claimExit(namespace, id, execId, st.pid)) continue;
      await this.opts.onEvent({
        topic: '/tasks/exit',
        namespace,
        event: packAny('containerd.events.TaskExit', evTask.TaskExit, {
          containerId: id, id: execId || id, pid: st.pid, exitStatus: st.exitStatus, exitedAt: st.exitedAt,
        }),
        timestamp: toTimestamp(),
      });
    }
  }

  /**
   * Copies a shim's log lines, whole, to `<logDir>/shims.log` prefixed with `<namespace>/<id>: `
   * (one file for every shim of the node, as containerd puts them in its own log: a file per
   * container would pile up with every container ever run), or to our log without a logDir.
   */
  private drainLog(h: ShimHandle): void {
    const log = h.log;
    if (!log) return;
    const { namespace, id } = h.bundle;
    if (this.opts.logDir && !this.shimLog) {
      this.shimLog = createWriteStream(path.join(this.opts.logDir, 'shims.log'), { flags: 'a' });
      this.shimLog.on('error', () => {});
    }
    const out = this.shimLog;
    const prefix = `${namespace}/${id}: `;
    let partial = '';
    log.setEncoding('utf8');
    log.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        if (!line) continue;
        if (out) out.write(prefix + line + '\n');
        else this.log('shim', { namespace, id, line });
      }
    });
  }
}

/** The shim's address recorded in the bundle, or "". */
function readAddress(bundle: Bundle): string {
  try {
    return readFileSync(path.join(bundle.path, 'address'), 'utf8').trim();
  } catch {
    return '';
  }
}

function key(namespace: string, id: string): string {
  return `${namespace}/${id}`;
}

function exitKey(execId: string, pid: number): string {
  return `${execId || '-'} ${pid}`;
}

/** The exits already reported for a task's processes (see claimExit). */
function readExits(bundle: Bundle): Set<string> {
  try {
    return new Set(readFileSync(path.join(bundle.path, 'exits'), 'utf8').split('\n').filter(Boolean));
  } catch {
    return new Set();
  }
}

/**
 * A shim that was killed leaves its socket file behind; remove it once nothing answers
 * on it (a live shim, e.g. one serving a group of tasks, keeps its socket).
 */
async function removeDeadSocket(address: string): Promise<void> {
  if (!address.startsWith('unix://')) return;
  const p = address.slice('unix://'.length);
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st?.isSocket()) return;
  const live = await TtrpcClient.connect(address).then((c) => (c.close(), true), () => false);
  if (!live) await fs.rm(p, { force: true });
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch(() => [] as string[]);
}
