// Direct links: requests beside NATS between processes on the same host.
//
// NATS carries every request between hosts, every event, and the first request a process
// makes to each subject. A server that offers a link advertises it on its NATS replies
// (`Flotilla-Direct: <instance> unix:<path>`, only to callers that said `Flotilla-Direct-Ok`);
// from then on the caller sends that subject's requests over the unix socket to that
// instance: the subject of a pinned session (inst.*, stream.*), or a service or node subject
// (svc.*, node.*) that this instance serves. On this machine a NATS request costs ~0.8 ms
// more than the same request over the socket (nats-server in between, and both ends'
// client libraries), and a byte through nats-server ~7 ms of CPU per MiB. A caller that
// cannot connect (another host, direct links off) keeps using NATS, which reaches the same
// handlers, so the link is an optimisation and never a requirement.
//
// On connecting, the server first sends a hello frame naming its bus instance, and the client
// sends nothing until it has checked it: a socket path that names some other process (a
// shared directory on another host, a reused pid) is refused and NATS used instead.
//
// Frames, both directions, after a u32 BE length of the rest:
//   hello:   u32 0 | instance (utf8)                                   server -> client, first
//   request: u32 id | u16 subject length | subject | u32 header length | headers (JSON) | data
//   reply:   u32 id | u32 header length | headers (JSON) | data
// Request ids start at 1; requests on one connection are answered in any order, matched by id.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { MsgHdrs } from 'nats';
import { PlainHeaders, type HeaderMap } from './context.js';

/** What a handler needs of an incoming request; NATS's Msg has the same shape. */
export interface Incoming {
  subject: string;
  /** Set when the request came over a direct link (NATS's Msg lacks it). */
  direct?: true;
  data: Uint8Array;
  headers?: HeaderMap;
  reply?: string;
  respond(data?: Uint8Array, opts?: { headers?: MsgHdrs }): boolean;
  /**
   * As respond, and `written()` once the data has been handed to the kernel, after which
   * the caller may reuse its memory (direct links only: NATS may still hold it).
   */
  respondThen?(data: Uint8Array, opts: { headers?: MsgHdrs } | undefined, written: () => void): boolean;
}

/** A reply as the client reads it; NATS's Msg has the same shape. */
export interface Reply {
  data: Uint8Array;
  headers?: HeaderMap;
}

function encodeHeaders(h: HeaderMap | undefined): Buffer {
  if (!h) return Buffer.alloc(0);
  if (h instanceof PlainHeaders) return Buffer.from(JSON.stringify(h.values));
  const o: Record<string, string> = {};
  for (const k of h.keys()) o[k] = h.get(k);
  return Buffer.from(JSON.stringify(o));
}

function decodeHeaders(b: Buffer): PlainHeaders | undefined {
  if (b.length === 0) return undefined;
  return new PlainHeaders(JSON.parse(b.toString('utf8')) as Record<string, string>);
}

/** Largest frame accepted: a batch plus generous room for headers; anything larger is a protocol error. */
const MAX_FRAME = 64 * 1024 * 1024;
/** A direct link client's read buffer. */
const READ_BUFFER = 64 * 1024;

/** Frames this large get memory of their own, which recycleFrame() can take back. */
const POOLED_FROM = 64 * 1024;
/** Pooled frame memory is rounded up to this, so that the next frame of about the same size fits. */
const POOL_ROUND = 256 * 1024;
/** At most this many spare frame buffers are kept per process. */
const POOL_MAX = 4;
const pooled = new WeakSet<ArrayBufferLike>();
const spareFrames: Buffer[] = [];

/** Memory for a frame of `n` bytes: a spare one when it fits, else fresh. */
function frameBuffer(n: number): Buffer {
  if (n < POOLED_FROM) return Buffer.allocUnsafe(n);
  // Not a much larger one: a frame nobody gives back (a unary reply) takes its memory along.
  const i = spareFrames.findIndex((b) => b.length >= n && b.length <= 2 * n + POOL_ROUND);
  if (i >= 0) return spareFrames.splice(i, 1)[0]!.subarray(0, n);
  const whole = Buffer.allocUnsafeSlow(Math.ceil(n / POOL_ROUND) * POOL_ROUND);
  pooled.add(whole.buffer);
  return whole.subarray(0, n);
}

/**
 * `data` (a reply's data, or any view into the frame it came in) is referenced nowhere any
 * more: the frame's memory may take a later frame. For a consumer that holds large replies
 * until a socket has written them (the gateway's server streams: a 10k-container list is
 * ~27 MB of batches, whose fresh memory outside V8's heap set off its major collections).
 * Anything not read from a direct link is ignored; never call it for bytes still in use.
 */
export function recycleFrame(data: Uint8Array): void {
  if (!pooled.has(data.buffer) || spareFrames.length >= POOL_MAX) return;
  const whole = Buffer.from(data.buffer);
  if (!spareFrames.some((b) => b.buffer === whole.buffer)) spareFrames.push(whole);
}

/**
 * Cuts a stream read into one reused buffer (node's `onread`) into length-prefixed frames,
 * each copied into memory of its own as it arrives: nothing points into a read after it.
 * Reads into fresh memory each time (a socket's default) cost a 10k-container list's 27 MB
 * of allocation in the gateway, external to V8's heap and so a trigger of major collections.
 */
class CopyingFrameReader {
  private readonly head = Buffer.allocUnsafe(4);
  private headFill = 0;
  private frame?: Buffer;
  private fill = 0;

  constructor(private readonly onFrame: (frame: Buffer) => void) {}

  push(chunk: Buffer): void {
    let o = 0;
    while (o < chunk.length) {
      if (!this.frame) {
        const n = Math.min(4 - this.headFill, chunk.length - o);
        chunk.copy(this.head, this.headFill, o, o + n);
        this.headFill += n;
        o += n;
        if (this.headFill < 4) return;
        this.headFill = 0;
        const need = this.head.readUInt32BE(0);
        if (need > MAX_FRAME) throw new Error(`direct link: frame of ${need} bytes exceeds ${MAX_FRAME}`);
        this.frame = frameBuffer(need);
        this.fill = 0;
      }
      const n = chunk.copy(this.frame, this.fill, o);
      this.fill += n;
      o += n;
      if (this.fill === this.frame.length) {
        const f = this.frame;
        this.frame = undefined;
        this.onFrame(f);
      }
    }
  }
}

/** Cuts a byte stream into length-prefixed frames, concatenating each frame's pieces once. */
class FrameReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private need = -1;

  constructor(private readonly onFrame: (frame: Buffer) => void) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.have += chunk.length;
    for (;;) {
      if (this.need < 0) {
        if (this.have < 4) return;
        const head = this.take(4);
        this.need = head.readUInt32BE(0);
        if (this.need > MAX_FRAME) throw new Error(`direct link: frame of ${this.need} bytes exceeds ${MAX_FRAME}`);
      }
      if (this.have < this.need) return;
      const frame = this.take(this.need);
      this.need = -1;
      this.onFrame(frame);
    }
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - off);
        c.copy(out, off, 0, k);
        off += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.have -= n;
    return out;
  }
}

/**
 * The server end: one unix socket per bus instance. `dispatch` receives each request as an
 * Incoming whose respond() writes the reply frame back on the same connection.
 */
export class DirectServer {
  private readonly server: net.Server;
  private readonly conns = new Set<net.Socket>();

  private readonly hello: Buffer;

  private constructor(
    readonly address: string,
    private readonly file: string,
    server: net.Server,
    instance: string,
    private readonly dispatch: (msg: Incoming) => void,
  ) {
    const id = Buffer.from(instance, 'utf8');
    this.hello = Buffer.allocUnsafe(8 + id.length);
    this.hello.writeUInt32BE(4 + id.length, 0);
    this.hello.writeUInt32BE(0, 4);
    id.copy(this.hello, 8);
    this.server = server;
    server.on('connection', (s) => this.accept(s));
  }

  /** Listens on `file` as bus instance `instance` (named in the hello frame). */
  static async listen(file: string, instance: string, dispatch: (msg: Incoming) => void): Promise<DirectServer> {
    await fs.promises.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    await fs.promises.rm(file, { force: true });
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(file, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await fs.promises.chmod(file, 0o600);
    return new DirectServer(`unix:${file}`, file, server, instance, dispatch);
  }

  private accept(sock: net.Socket): void {
    this.conns.add(sock);
    sock.on('close', () => this.conns.delete(sock));
    sock.on('error', () => sock.destroy());
    sock.write(this.hello);
    const reader = new FrameReader((f) => {
      const id = f.readUInt32BE(0);
      const sl = f.readUInt16BE(4);
      const subject = f.toString('utf8', 6, 6 + sl);
      const hl = f.readUInt32BE(6 + sl);
      const hstart = 10 + sl;
      const headers = decodeHeaders(f.subarray(hstart, hstart + hl));
      let answered = false;
      const respondThen = (data: Uint8Array = new Uint8Array(0), opts?: { headers?: MsgHdrs }, written?: () => void): boolean => {
        if (answered || sock.destroyed) return false;
        answered = true;
        const hb = encodeHeaders(opts?.headers);
        const head = Buffer.allocUnsafe(12 + hb.length);
        head.writeUInt32BE(8 + hb.length + data.byteLength, 0);
        head.writeUInt32BE(id, 4);
        head.writeUInt32BE(hb.length, 8);
        hb.copy(head, 12);
        sock.cork();
        sock.write(head);
        if (data.byteLength > 0) sock.write(data, written && ((err) => err || written()));
        else written?.();
        sock.uncork();
        return true;
      };
      this.dispatch({
        subject,
        direct: true,
        data: f.subarray(hstart + hl),
        headers,
        reply: `direct.${id}`,
        respond: (data, opts) => respondThen(data, opts),
        respondThen,
      });
    });
    sock.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch {
        sock.destroy();
      }
    });
  }

  async close(): Promise<void> {
    for (const s of this.conns) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await fs.promises.rm(this.file, { force: true }).catch(() => {});
  }
}

/** Why a direct request failed: the link itself (the caller may treat it like NATS's no-responders). */
export class DirectLinkError extends Error {
  constructor(message: string, readonly beforeSend: boolean) {
    super(message);
    this.name = 'DirectLinkError';
  }
}

interface Pending {
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** How long a new connection may take to say hello before the address counts as unreachable. */
const HELLO_MS = 2000;

/** The client end: one connection to one server instance, requests multiplexed by id. */
export class DirectLink {
  private sock?: net.Socket;
  private connecting?: Promise<net.Socket>;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /** Set when connecting failed or another instance answered: not reachable from here. */
  unreachable = false;

  constructor(
    readonly address: string,
    /** The bus instance that advertised the address; any other answering is refused. */
    readonly instance: string,
  ) {}

  private connect(): Promise<net.Socket> {
    if (this.sock && !this.sock.destroyed) return Promise.resolve(this.sock);
    if (this.connecting) return this.connecting;
    const file = this.address.slice('unix:'.length);
    this.connecting = new Promise<net.Socket>((resolve, reject) => {
      let reader: CopyingFrameReader | undefined;
      const s = net.connect({
        path: file,
        onread: {
          buffer: Buffer.allocUnsafeSlow(READ_BUFFER),
          callback: (n: number, buf: Uint8Array) => {
            try {
              reader!.push((buf as Buffer).subarray(0, n));
            } catch (e) {
              s.destroy(e as Error);
            }
            return true;
          },
        },
      });
      const fail = (why: string) => {
        if (!this.connecting) return;
        this.connecting = undefined;
        this.unreachable = true;
        clearTimeout(timer);
        s.destroy();
        reject(new DirectLinkError(`direct link ${this.address}: ${why}`, true));
      };
      const timer = setTimeout(() => fail('no hello'), HELLO_MS);
      reader = new CopyingFrameReader((f) => {
        if (this.sock === s) return this.onReply(f);
        // The hello: until it names the advertised instance, nothing is sent.
        const instance = f.readUInt32BE(0) === 0 ? f.toString('utf8', 4) : '';
        if (instance !== this.instance) return fail(`instance ${JSON.stringify(instance)} answered, not ${this.instance}`);
        clearTimeout(timer);
        this.sock = s;
        this.connecting = undefined;
        resolve(s);
      });
      s.on('error', (err) => fail(err.message));
      s.on('close', () => {
        fail('connection closed');
        if (this.sock === s) this.sock = undefined;
        for (const [id, p] of this.pending) {
          this.pending.delete(id);
          clearTimeout(p.timer);
          p.reject(new DirectLinkError(`direct link ${this.address}: connection closed`, false));
        }
      });
    });
    return this.connecting;
  }

  private onReply(f: Buffer): void {
    const id = f.readUInt32BE(0);
    const p = this.pending.get(id);
    if (!p) return; // timed out already
    this.pending.delete(id);
    clearTimeout(p.timer);
    const hl = f.readUInt32BE(4);
    p.resolve({ headers: decodeHeaders(f.subarray(8, 8 + hl)), data: f.subarray(8 + hl) });
  }

  /**
   * One request; rejects with DirectLinkError when the link fails, or `onTimeout()` after
   * `timeoutMs`. `written()` runs once the socket has handed all of `data` to the kernel.
   */
  async request(subject: string, data: Uint8Array | readonly Uint8Array[], h: HeaderMap | undefined, timeoutMs: number, onTimeout: () => Error, written?: () => void): Promise<Reply> {
    const sock = await this.connect();
    const pieces = Array.isArray(data) ? (data as readonly Uint8Array[]) : [data as Uint8Array];
    const size = pieces.reduce((n, p) => n + p.byteLength, 0);
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    const sb = Buffer.from(subject, 'utf8');
    const hb = encodeHeaders(h);
    const head = Buffer.allocUnsafe(14 + sb.length + hb.length);
    head.writeUInt32BE(10 + sb.length + hb.length + size, 0);
    head.writeUInt32BE(id, 4);
    head.writeUInt16BE(sb.length, 8);
    sb.copy(head, 10);
    head.writeUInt32BE(hb.length, 10 + sb.length);
    hb.copy(head, 14 + sb.length);
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(onTimeout());
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      const body = pieces.filter((p) => p.byteLength > 0);
      const done = written && ((err?: Error | null) => err || written());
      sock.cork();
      sock.write(head, body.length === 0 ? done : undefined);
      body.forEach((p, i) => sock.write(p, i === body.length - 1 ? done : undefined));
      sock.uncork();
    });
  }

  close(): void {
    this.sock?.destroy();
  }
}
