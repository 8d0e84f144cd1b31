// The node agent's shim manager: starts containerd-shim-runc-v2 exactly as containerd 1.6's
// runtime v2 does (bundle layout, arguments, environment, log FIFO), talks ttrpc to it,
// and serves the ttrpc Events endpoint the shims forward their events to.
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs/promises';
import { constants as fsc, createWriteStream, openSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Any, Empty, shim as sapi, ttrpcEvents, type Mount, type MessageType } from '@flotilla/api';
import { errAlreadyExists, errNotFound, errUnavailable, errInvalidArgument, isNotFound } from '@flotilla/errdefs';
import { TtrpcClient, TtrpcServer } from '@flotilla/ttrpc';

const execFileP = promisify(execFile);
const TASK_SERVICE = 'containerd.task.v2.Task';
const DEFAULT_RUNTIME = 'io.containerd.runc.v2';
/** Runtimes this agent runs, by containerd's runtime name, and the shim binary for each. */
const SHIM_BINARIES: Record<string, string> = { 'io.containerd.runc.v2': 'containerd-shim-runc-v2' };

export interface ShimEvent {
  namespace: string;
  topic: string;
  event: Any | undefined;
  timestamp: { seconds: number; nanos: number } | undefined;
}

export interface ShimManagerOptions {
  /** Bundles live in <stateDir>/<namespace>/<id>. */
  stateDir: string;
  /** Our ttrpc events server socket, passed to shims as TTRPC_ADDRESS. */
  eventsSocket: string;
  /** Passed as -address (the gateway socket); shims derive their socket path from it. */
  grpcAddress: string;
  /** Where shim logs (their log FIFO) are appended. */
  logDir: string;
  onEvent: (e: ShimEvent) => void;
}

export interface CreateOptions {
  namespace: string;
  id: string;
  /** The OCI runtime spec as JSON (containers.Container.spec's value). */
  spec: Uint8Array;
  runtime?: string;
  rootfs: Mount[];
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  options?: Any;
}

interface Shim {
  namespace: string;
  id: string;
  bundle: string;
  client: TtrpcClient;
  /** Reading end of the shim's log FIFO; destroying it closes the fd. */
  log?: net.Socket;
}

export class ShimManager {
  private readonly shims = new Map<string, Shim>();
  private readonly events = new TtrpcServer();

  constructor(private readonly opts: ShimManagerOptions) {}

  private key(ns: string, id: string): string {
    return `${ns}/${id}`;
  }

  bundlePath(ns: string, id: string): string {
    return path.join(this.opts.stateDir, ns, id);
  }

  async start(): Promise<void> {
    await fs.mkdir(this.opts.stateDir, { recursive: true });
    await fs.mkdir(this.opts.logDir, { recursive: true });
    await fs.mkdir(path.dirname(this.opts.eventsSocket), { recursive: true });
    this.events.register(ttrpcEvents.EventsDefinition.fullName, 'Forward', async (payload) => {
      const req = ttrpcEvents.ForwardRequest.decode(payload);
      const env = req.envelope;
      if (env) this.opts.onEvent({ namespace: env.namespace, topic: env.topic, event: env.event, timestamp: env.timestamp });
      return new Uint8Array(0);
    });
    await this.events.listen(this.opts.eventsSocket, 0o600);
  }

  /** Reconnects to shims still running from an earlier life of this agent (live restore). */
  async loadExisting(): Promise<{ namespace: string; id: string }[]> {
    const found: { namespace: string; id: string }[] = [];
    for (const ns of await fs.readdir(this.opts.stateDir).catch(() => [] as string[])) {
      for (const id of await fs.readdir(path.join(this.opts.stateDir, ns)).catch(() => [] as string[])) {
        const bundle = this.bundlePath(ns, id);
        const address = await fs.readFile(path.join(bundle, 'address'), 'utf8').catch(() => '');
        if (!address) continue;
        try {
          const client = await TtrpcClient.connect(address.trim());
          this.track({ namespace: ns, id, bundle, client });
          found.push({ namespace: ns, id });
        } catch {
          // Shim gone while we were away: containerd reports such tasks as exited (issue 5).
        }
      }
    }
    return found;
  }

  private track(s: Shim): void {
    const k = this.key(s.namespace, s.id);
    this.shims.set(k, s);
    s.client.onClose(() => {
      if (this.shims.get(k) === s) this.shims.delete(k);
    });
  }

  private get(ns: string, id: string): Shim {
    const s = this.shims.get(this.key(ns, id));
    if (!s) throw errNotFound(`task ${id}`);
    return s;
  }

  has(ns: string, id: string): boolean {
    return this.shims.has(this.key(ns, id));
  }

  list(ns: string): string[] {
    return [...this.shims.values()].filter((s) => s.namespace === ns).map((s) => s.id);
  }

  private async call<Req, Res>(s: Shim, method: string, reqType: MessageType<Req>, resType: MessageType<Res>, req: Partial<Req>): Promise<Res> {
    const out = await s.client.call(TASK_SERVICE, method, reqType.encode(reqType.fromPartial(req)).finish());
    return resType.decode(out);
  }

  async create(o: CreateOptions): Promise<{ pid: number }> {
    if (this.has(o.namespace, o.id)) throw errAlreadyExists(`task ${o.id}`);
    const runtime = o.runtime || DEFAULT_RUNTIME;
    const binary = SHIM_BINARIES[runtime];
    if (!binary) throw errInvalidArgument(`runtime "${runtime}" is not supported by this node`);
    const bundle = this.bundlePath(o.namespace, o.id);
    await fs.mkdir(path.dirname(bundle), { recursive: true, mode: 0o711 });
    try {
      await fs.mkdir(bundle, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        // A bundle left by a task that is no longer tracked: stale, clear it.
        await fs.rm(bundle, { recursive: true, force: true });
        await fs.mkdir(bundle, { mode: 0o700 });
      } else throw err;
    }
    let shim: Shim | undefined;
    let log: net.Socket | undefined;
    try {
      await fs.mkdir(path.join(bundle, 'rootfs'), { mode: 0o711 });
      await fs.mkdir(path.join(bundle, 'work'), { mode: 0o711 });
      await fs.writeFile(path.join(bundle, 'config.json'), o.spec, { mode: 0o666 });
      log = await this.openShimLog(bundle, `${o.namespace}-${o.id}`);
      const address = await this.startShim(binary, o.namespace, o.id, bundle, o.options);
      await fs.writeFile(path.join(bundle, 'shim-binary-path'), binary, { mode: 0o600 });
      const client = await TtrpcClient.connect(address);
      shim = { namespace: o.namespace, id: o.id, bundle, client, log };
      this.track(shim);
      const res = await this.call(shim, 'Create', sapi.CreateTaskRequest, sapi.CreateTaskResponse, {
        id: o.id,
        bundle,
        rootfs: o.rootfs,
        terminal: o.terminal,
        stdin: o.stdin,
        stdout: o.stdout,
        stderr: o.stderr,
        options: o.options,
      });
      return { pid: res.pid };
    } catch (err) {
      if (shim) await this.shutdown(shim).catch(() => {});
      else log?.destroy();
      await this.removeBundle(bundle);
      throw err;
    }
  }

  /** containerd creates the shim's log FIFO and drains it; the shim opens it for writing. */
  private async openShimLog(bundle: string, name: string): Promise<net.Socket> {
    const fifo = path.join(bundle, 'log');
    await execFileP('mkfifo', ['-m', '0700', fifo]);
    // O_RDWR: opening never blocks and the FIFO never reports EOF while the shim restarts.
    const fd = openSync(fifo, fsc.O_RDWR | fsc.O_NONBLOCK);
    const sock = new net.Socket({ fd, readable: true, writable: false });
    sock.on('error', () => {});
    sock.pipe(createWriteStream(path.join(this.opts.logDir, `shim-${name}.log`), { flags: 'a' }));
    return sock;
  }

  private startShim(binary: string, ns: string, id: string, bundle: string, options?: Any): Promise<string> {
    return new Promise((resolve, reject) => {
      const child = spawn(binary, ['-namespace', ns, '-address', this.opts.grpcAddress, '-publish-binary', '/bin/false', '-id', id, 'start'], {
        cwd: bundle,
        env: { ...process.env, GOMAXPROCS: '2', TTRPC_ADDRESS: this.opts.eventsSocket },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let out = '';
      let errOut = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (errOut += d));
      child.on('error', (err) => reject(errUnavailable(`start shim ${binary}: ${err.message}`)));
      child.on('close', (code) => {
        if (code === 0 && out.trim()) resolve(out.trim());
        else reject(errUnavailable(`start shim: ${(out + errOut).trim()}: exit status ${code}`));
      });
      // The shim reads its runtime options (an Any) from stdin until EOF.
      child.stdin.end(options ? Buffer.from(Any.encode(options).finish()) : undefined);
    });
  }

  async startTask(ns: string, id: string, execId = ''): Promise<{ pid: number }> {
    const s = this.get(ns, id);
    return this.call(s, 'Start', sapi.StartRequest, sapi.StartResponse, { id, execId });
  }

  /** Blocks until the process exits. */
  async wait(ns: string, id: string, execId = ''): Promise<sapi.WaitResponse> {
    const s = this.get(ns, id);
    return this.call(s, 'Wait', sapi.WaitRequest, sapi.WaitResponse, { id, execId });
  }

  async kill(ns: string, id: string, signal: number, all: boolean, execId = ''): Promise<void> {
    const s = this.get(ns, id);
    await this.call(s, 'Kill', sapi.KillRequest, Empty, { id, execId, signal, all });
  }

  async state(ns: string, id: string, execId = ''): Promise<sapi.StateResponse> {
    const s = this.get(ns, id);
    return this.call(s, 'State', sapi.StateRequest, sapi.StateResponse, { id, execId });
  }

  async pids(ns: string, id: string): Promise<sapi.PidsResponse> {
    const s = this.get(ns, id);
    return this.call(s, 'Pids', sapi.PidsRequest, sapi.PidsResponse, { id });
  }

  /** Deletes the task (or an exec), then shuts the shim down and removes the bundle. */
  async delete(ns: string, id: string, execId = ''): Promise<sapi.DeleteResponse> {
    const s = this.get(ns, id);
    const res = await this.call(s, 'Delete', sapi.DeleteRequest, sapi.DeleteResponse, { id, execId });
    if (!execId) {
      await this.shutdown(s);
      await this.removeBundle(s.bundle);
    }
    return res;
  }

  private async shutdown(s: Shim): Promise<void> {
    try {
      await this.call(s, 'Shutdown', sapi.ShutdownRequest, Empty, { id: s.id, now: false });
    } catch (err) {
      // The shim exits while answering Shutdown; a closed connection is the expected end.
      if (!isNotFound(err) && !s.client.isClosed) throw err;
    } finally {
      s.client.close();
      s.log?.destroy();
      this.shims.delete(this.key(s.namespace, s.id));
    }
  }

  private async removeBundle(bundle: string): Promise<void> {
    // The shim unmounts rootfs on delete; never recurse through a still-mounted rootfs.
    await execFileP('umount', [path.join(bundle, 'rootfs')]).catch(() => {});
    await fs.rm(path.join(bundle, 'rootfs'), { recursive: false, force: true }).catch(() => {});
    await fs.rm(bundle, { recursive: true, force: true });
  }

  /** Closes connections; running shims and their containers keep running (live restore). */
  async close(): Promise<void> {
    for (const s of this.shims.values()) {
      s.client.close();
      s.log?.destroy();
    }
    this.shims.clear();
    await this.events.close();
  }
}
