// A gRPC server over HTTP/2 (RFC 9113) on plain sockets, for the gateway's unix socket.
//
// Why not grpc-js on node:http2: every call there passes nghttp2, node's Http2Stream (a
// Duplex stream per call), header objects and grpc-js's interceptor chain, ~0.5 ms of CPU per
// small call on these machines, and grpc-js sends a unary call's trailers a write after its
// message. Here a call is a few objects, a unary reply (headers, message, trailers) leaves in
// one write, and bytes are never copied on the way except to join a message that spans
// frames.
//
// What it implements: the connection preface, SETTINGS, PING, GOAWAY, RST_STREAM,
// WINDOW_UPDATE and flow control in both directions, HEADERS + CONTINUATION with HPACK,
// padding; gRPC's length-prefixed messages (uncompressed only: a compressed message is
// UNIMPLEMENTED, as a server with no decompressor answers), grpc-timeout, trailers and
// trailers-only responses, message size limits. Not implemented: server push (a server never
// needs it), priorities (ignored, as RFC 9113 allows), TLS (unix sockets only).
import fs from 'node:fs/promises';
import net from 'node:net';
import { HpackDecoder, HpackError, encodeHeaders } from './hpack.js';
import { GrpcCode } from '@flotilla/errdefs';
import { GrpcError, encodeGrpcMessage, messagePrefix, parseGrpcTimeout, type Status } from './status.js';

export interface ServerOptions {
  /** Largest request message accepted; a larger one ends its call with RESOURCE_EXHAUSTED. */
  maxReceiveMessage?: number;
  /** Largest response message sent; a larger one ends its call with RESOURCE_EXHAUSTED. */
  maxSendMessage?: number;
  /** Receive window offered per stream (SETTINGS_INITIAL_WINDOW_SIZE). */
  streamWindow?: number;
  /** Receive window offered per connection. */
  connectionWindow?: number;
  maxConcurrentStreams?: number;
  /** Bound on a request's decoded headers (SETTINGS_MAX_HEADER_LIST_SIZE). */
  maxHeaderListSize?: number;
  /** The status a handler's failure ends its call with (default: GrpcError's, else UNKNOWN). */
  statusOf?: (err: unknown) => Status;
}

/** What every handler sees of its call. */
export interface Call {
  /** The method's path, `/<service>/<method>`. */
  readonly path: string;
  /**
   * The HTTP/2 connection the call came on, as an opaque identity: the same object for
   * every call of that connection (a key for per-connection state in a WeakMap).
   */
  readonly connection: object;
  /** The call's HTTP/2 stream id: a client numbers the calls it opens on a connection 1, 3, 5, … (RFC 9113 §5.1.1). */
  readonly id: number;
  /** The first value of a request header (lower-case name), as the client sent it. */
  header(name: string): string | undefined;
  /** From grpc-timeout: the absolute deadline, epoch ms. */
  readonly deadline: number | undefined;
  /** Set once the call is cancelled: reset by the client, connection lost, or deadline passed. */
  readonly cancelled: boolean;
  /** `fn` runs once if the call is cancelled (never when it ends normally). */
  onCancel(fn: () => void): void;
}

/** A call whose replies are a stream of messages. */
export interface StreamingCall extends Call {
  /**
   * Queues one message. Returns false when the call's queue is past its high-water mark:
   * wait for drained() before the next. A message past maxSendMessage ends the call with
   * RESOURCE_EXHAUSTED. After the call has ended or been cancelled, messages are dropped.
   */
  write(msg: Uint8Array): boolean;
  /**
   * Queues bytes that are already whole gRPC messages (prefix and body); as write().
   * `written` runs once the socket has handed all of them to the kernel (at once when
   * `frames` is empty; never if the call ends before): from then on nothing reads their
   * memory, and the caller may reuse it.
   */
  writeFrames(frames: Uint8Array, written?: () => void): boolean;
  /** Resolves true once the queue is below its high-water mark, false if the call is over. */
  drained(): Promise<boolean>;
}

/** A call that also reads a stream of messages from the client. */
export interface BidiCall extends StreamingCall {
  /** The next message, or undefined once the client has half-closed. Throws if cancelled. */
  read(): Promise<Buffer | undefined>;
  /**
   * `msg`, returned by read(), is referenced nowhere any more: its memory may take a later
   * message of this call. Optional; a message never given back is collected as usual. Large
   * messages that stay alive across collections (an ingest's, in flight to the content
   * service) are otherwise freed only by V8's major collections, which their external
   * memory then sets off every few MiB.
   */
  recycle(msg: Buffer): void;
}

export type UnaryHandler = (request: Buffer, call: Call) => Promise<Uint8Array>;
/** Resolving ends the call with OK after the queued messages; throwing ends it with the error's status. */
export type ServerStreamHandler = (request: Buffer, call: StreamingCall) => Promise<void>;
export type BidiHandler = (call: BidiCall) => Promise<void>;

type Handler =
  | { kind: 'unary'; fn: UnaryHandler }
  | { kind: 'server'; fn: ServerStreamHandler }
  | { kind: 'bidi'; fn: BidiHandler };

// Frame types, flags, error codes and settings (RFC 9113 §6, §7, §6.5.2).
const DATA = 0x0, HEADERS = 0x1, PRIORITY = 0x2, RST_STREAM = 0x3, SETTINGS = 0x4, PUSH_PROMISE = 0x5, PING = 0x6, GOAWAY = 0x7, WINDOW_UPDATE = 0x8, CONTINUATION = 0x9;
const END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4, PADDED = 0x8, PRIORITY_FLAG = 0x20;
const NO_ERROR = 0x0, PROTOCOL_ERROR = 0x1, INTERNAL_ERROR = 0x2, FLOW_CONTROL_ERROR = 0x3, STREAM_CLOSED = 0x5, FRAME_SIZE_ERROR = 0x6, REFUSED_STREAM = 0x7, CANCEL = 0x8, COMPRESSION_ERROR = 0x9;
const SETTINGS_ENABLE_PUSH = 0x2, SETTINGS_MAX_CONCURRENT_STREAMS = 0x3, SETTINGS_INITIAL_WINDOW_SIZE = 0x4, SETTINGS_MAX_FRAME_SIZE = 0x5, SETTINGS_MAX_HEADER_LIST_SIZE = 0x6;

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const FRAME_HEADER = 9;
const DEFAULT_WINDOW = 65_535;
const MAX_WINDOW = 0x7fff_ffff;
/** The largest frame we accept (we advertise no SETTINGS_MAX_FRAME_SIZE, so the default). */
const MAX_FRAME = 16_384;
/** Size of each connection's read buffer. */
const READ_BUFFER = 64 * 1024;
/** A streaming call's queue past which write() asks the handler to wait. */
const STREAM_HWM = 1 << 20;
/** Bytes the socket may hold unsent before streaming calls are asked to wait. */
const SOCKET_HWM = 4 << 20;

const RESPONSE_HEADERS = encodeHeaders([[':status', '200'], ['content-type', 'application/grpc']]);

class ConnectionError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

function frameHeader(length: number, type: number, flags: number, id: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER);
  h[0] = length >>> 16;
  h[1] = (length >>> 8) & 0xff;
  h[2] = length & 0xff;
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(id, 5);
  return h;
}

function u32(v: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(v, 0);
  return b;
}

function trailersBlock(status: Status, only: boolean): Buffer {
  const h: [string, string][] = only ? [[':status', '200'], ['content-type', 'application/grpc']] : [];
  h.push(['grpc-status', String(status.code)]);
  if (status.message) h.push(['grpc-message', encodeGrpcMessage(status.message)]);
  return encodeHeaders(h);
}

function defaultStatusOf(err: unknown): Status {
  if (err instanceof GrpcError) return { code: err.code, message: err.message };
  return { code: GrpcCode.Unknown, message: err instanceof Error ? err.message : String(err) };
}

export class GrpcServer {
  private readonly handlers = new Map<string, Handler>();
  /** Service names with at least one handler, for UNIMPLEMENTED's wording. */
  private readonly services = new Set<string>();
  private readonly conns = new Set<Connection>();
  private net?: net.Server;
  readonly opts: Required<ServerOptions>;

  constructor(opts: ServerOptions = {}) {
    this.opts = {
      maxReceiveMessage: opts.maxReceiveMessage ?? 4 << 20,
      maxSendMessage: opts.maxSendMessage ?? 4 << 20,
      streamWindow: Math.max(DEFAULT_WINDOW, opts.streamWindow ?? DEFAULT_WINDOW),
      connectionWindow: Math.max(DEFAULT_WINDOW, opts.connectionWindow ?? DEFAULT_WINDOW),
      maxConcurrentStreams: opts.maxConcurrentStreams ?? 1000,
      maxHeaderListSize: opts.maxHeaderListSize ?? 256 << 10,
      statusOf: opts.statusOf ?? defaultStatusOf,
    };
    if (this.opts.streamWindow > MAX_WINDOW || this.opts.connectionWindow > MAX_WINDOW) throw new RangeError('window larger than 2^31-1');
  }

  unary(path: string, fn: UnaryHandler): void {
    this.add(path, { kind: 'unary', fn });
  }

  serverStream(path: string, fn: ServerStreamHandler): void {
    this.add(path, { kind: 'server', fn });
  }

  bidi(path: string, fn: BidiHandler): void {
    this.add(path, { kind: 'bidi', fn });
  }

  private add(path: string, h: Handler): void {
    const slash = path.lastIndexOf('/');
    if (!path.startsWith('/') || slash <= 1) throw new Error(`method path ${path}: want /<service>/<method>`);
    this.handlers.set(path, h);
    this.services.add(path.slice(1, slash));
  }

  /** The handler for a path, or the status a call to it ends with (grpc-go's wording). */
  handlerFor(path: string): Handler | Status {
    const h = this.handlers.get(path);
    if (h) return h;
    const slash = path.lastIndexOf('/');
    if (!path.startsWith('/') || slash <= 1) return { code: GrpcCode.Unimplemented, message: `malformed method name: ${JSON.stringify(path)}` };
    const service = path.slice(1, slash);
    return {
      code: GrpcCode.Unimplemented,
      message: this.services.has(service) ? `unknown method ${path.slice(slash + 1)} for service ${service}` : `unknown service ${service}`,
    };
  }

  /** Listens on a unix socket (replacing a stale file). */
  async listen(socketPath: string): Promise<void> {
    await fs.rm(socketPath, { force: true });
    // Each connection reads into memory of its own (see ownReads), not a fresh buffer per read.
    const server = net.createServer({ pauseOnConnect: true }, (s) => this.ownReads(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.net = server;
  }

  /** Serves one already-connected socket (tests, or a listener of the caller's own). */
  accept(socket: net.Socket): void {
    const c = new Connection(this, socket, () => this.conns.delete(c));
    this.conns.add(c);
    socket.on('data', (chunk: Buffer) => c.input(chunk));
  }

  /**
   * Serves a connection just accepted (paused) with node's `onread`: every read lands in one
   * 64 KiB buffer of the connection's, which the next read overwrites (the Connection keeps
   * nothing that points into it). A socket's default reads allocate fresh memory each time;
   * an ingest's 256 MiB of it, external to V8's heap and never allocated alongside JS
   * objects, set off a major collection every ~10 MiB. net.Server has no onread of its own,
   * so the accepted socket's handle moves to a Socket made with one.
   */
  private ownReads(accepted: net.Socket): void {
    const handle = (accepted as unknown as { _handle: unknown })._handle;
    (accepted as unknown as { _handle: unknown })._handle = null;
    accepted.destroy(); // the server's count of connections; the handle is no longer its
    let c: Connection | undefined;
    const socket = new net.Socket({
      handle,
      onread: { buffer: Buffer.allocUnsafeSlow(READ_BUFFER), callback: (n: number, buf: Uint8Array) => (c!.input(buf.subarray(0, n) as Buffer), true) },
    } as net.SocketConstructorOpts);
    c = new Connection(this, socket, () => this.conns.delete(c!));
    this.conns.add(c);
  }

  /**
   * Stops accepting, tells every client to go away (GOAWAY) and resolves once the calls in
   * progress have ended and every connection is closed, or after `graceMs`, when whatever is
   * left is cut.
   */
  async close(graceMs = 3000): Promise<void> {
    const closed = this.net ? new Promise<void>((r) => this.net!.close(() => r())) : Promise.resolve();
    for (const c of this.conns) c.goAway();
    const deadline = Date.now() + graceMs;
    while (this.conns.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const c of this.conns) c.destroy();
    await closed;
  }
}

/** One HTTP/2 connection. */
class Connection {
  readonly streams = new Map<number, Stream>();
  private readonly decoder: HpackDecoder;
  private prefaceLeft = PREFACE.length;
  private settingsSeen = false;
  /**
   * The start of a frame that spans socket reads (copied: a read's memory may be reused),
   * and the size it needs to be complete. Reads are parsed in place, so nothing kept past
   * a read may be a view of it: CONTINUATION fragments, messages inside a frame and the
   * carried bytes are copies.
   */
  private readonly carry = Buffer.allocUnsafeSlow(FRAME_HEADER + MAX_FRAME);
  private carryLen = 0;
  private need = FRAME_HEADER;
  /** A HEADERS frame waiting for its CONTINUATIONs. */
  private block?: { id: number; flags: number; parts: Buffer[]; size: number };
  private lastStreamId = 0;
  private goingAway = false;
  private closed = false;
  private corked = false;
  // Sending: the client's settings and our connection-level send window.
  peerMaxFrame = MAX_FRAME;
  peerInitialWindow = DEFAULT_WINDOW;
  sendWindow = DEFAULT_WINDOW;
  /** Streams with data waiting for send window. */
  private readonly blocked = new Set<Stream>();
  // Receiving: our connection window left, consumed bytes not yet given back, and bytes held
  // back while bidi handlers are behind.
  private recvWindow: number;
  private recvCredit = 0;
  private heldCredit = 0;
  /** Bytes of complete messages queued for bidi handlers that have not read them yet. */
  private queued = 0;
  private readonly drainWaiters: (() => void)[] = [];

  constructor(readonly server: GrpcServer, private readonly socket: net.Socket, private readonly onClosed: () => void) {
    const o = server.opts;
    this.decoder = new HpackDecoder(4096, o.maxHeaderListSize);
    this.recvWindow = o.connectionWindow;
    socket.on('drain', () => this.onDrain());
    socket.on('error', () => {});
    socket.on('close', () => this.onClose());
    // Our preface: settings, and the connection window beyond the default.
    const settings = Buffer.allocUnsafe(18);
    settings.writeUInt16BE(SETTINGS_MAX_CONCURRENT_STREAMS, 0);
    settings.writeUInt32BE(o.maxConcurrentStreams, 2);
    settings.writeUInt16BE(SETTINGS_INITIAL_WINDOW_SIZE, 6);
    settings.writeUInt32BE(o.streamWindow, 8);
    settings.writeUInt16BE(SETTINGS_MAX_HEADER_LIST_SIZE, 12);
    settings.writeUInt32BE(o.maxHeaderListSize, 14);
    this.frame(SETTINGS, 0, 0, settings);
    if (o.connectionWindow > DEFAULT_WINDOW) this.frame(WINDOW_UPDATE, 0, 0, u32(o.connectionWindow - DEFAULT_WINDOW));
  }

  // ---- output ----

  /**
   * Queues bytes on the socket. Everything queued in one turn of the event loop leaves in
   * one write (the socket is corked until the next tick).
   */
  write(b: Uint8Array, cb?: (err?: Error | null) => void): void {
    if (this.closed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(b, cb);
  }

  frame(type: number, flags: number, id: number, payload?: Uint8Array): void {
    this.write(frameHeader(payload?.length ?? 0, type, flags, id));
    if (payload && payload.length > 0) this.write(payload);
  }

  /** Whether the socket holds more unsent bytes than streaming calls should add to. */
  get congested(): boolean {
    return this.socket.writableLength > SOCKET_HWM;
  }

  whenDrained(fn: () => void): void {
    this.drainWaiters.push(fn);
  }

  private onDrain(): void {
    for (const fn of this.drainWaiters.splice(0)) fn();
  }

  resetStream(id: number, code: number): void {
    this.frame(RST_STREAM, 0, id, u32(code));
  }

  /** Sends what the windows allow of a stream's queue; the rest waits for WINDOW_UPDATE. */
  pump(s: Stream): void {
    s.flush();
    if (s.hasPending()) this.blocked.add(s);
    else this.blocked.delete(s);
  }

  private pumpBlocked(): void {
    for (const s of [...this.blocked]) {
      if (this.sendWindow <= 0) return;
      this.pump(s);
    }
  }

  /**
   * Gives back `n` received bytes of connection window, in WINDOW_UPDATEs of at least a
   * quarter window; held while the bidi handlers' unread messages exceed a window, so a
   * connection buffers a bounded amount whatever its clients send.
   */
  credit(n: number): void {
    if (this.queued > this.server.opts.connectionWindow) {
      this.heldCredit += n;
      return;
    }
    this.recvCredit += n;
    if (this.recvCredit >= this.server.opts.connectionWindow >>> 2) {
      this.frame(WINDOW_UPDATE, 0, 0, u32(this.recvCredit));
      this.recvWindow += this.recvCredit;
      this.recvCredit = 0;
    }
  }

  /** Unread bidi messages grew (n > 0) or shrank; releases held credit once below a window. */
  queue(n: number): void {
    this.queued += n;
    if (n < 0 && this.heldCredit > 0 && this.queued <= this.server.opts.connectionWindow) {
      const h = this.heldCredit;
      this.heldCredit = 0;
      this.credit(h);
    }
  }

  removeStream(s: Stream): void {
    this.streams.delete(s.id);
    this.blocked.delete(s);
    if (this.goingAway && this.streams.size === 0) this.socket.end();
  }

  goAway(): void {
    if (this.closed || this.goingAway) return;
    this.goingAway = true;
    const p = Buffer.allocUnsafe(8);
    p.writeUInt32BE(this.lastStreamId, 0);
    p.writeUInt32BE(NO_ERROR, 4);
    this.frame(GOAWAY, 0, 0, p);
    if (this.streams.size === 0) this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** A connection error (RFC 9113 §5.4.1): GOAWAY with the code, then close. */
  private fatal(code: number, message: string): void {
    if (this.closed) return;
    const reason = Buffer.from(message.slice(0, 200), 'utf8');
    const p = Buffer.allocUnsafe(8 + reason.length);
    p.writeUInt32BE(this.lastStreamId, 0);
    p.writeUInt32BE(code, 4);
    reason.copy(p, 8);
    this.frame(GOAWAY, 0, 0, p);
    this.closed = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.cancelAll();
  }

  private onClose(): void {
    this.closed = true;
    this.cancelAll();
    this.onDrain();
    this.onClosed();
  }

  private cancelAll(): void {
    for (const s of [...this.streams.values()]) s.cancel(false);
    this.streams.clear();
    this.blocked.clear();
  }

  // ---- input ----

  /** One socket read; its memory may be reused once this returns. */
  input(chunk: Buffer): void {
    try {
      this.onData(chunk);
    } catch (err) {
      const code = err instanceof ConnectionError ? err.code : err instanceof HpackError ? COMPRESSION_ERROR : INTERNAL_ERROR;
      this.fatal(code, err instanceof Error ? err.message : String(err));
    }
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let off = 0;
    if (this.prefaceLeft > 0) {
      const n = Math.min(this.prefaceLeft, chunk.length);
      const at = PREFACE.length - this.prefaceLeft;
      if (chunk.compare(PREFACE, at, at + n, 0, n) !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'not an HTTP/2 client preface');
      this.prefaceLeft -= n;
      off = n;
    }
    // A frame (or its header) begun in an earlier read: complete only that frame, from as
    // much of this chunk as it needs, then go on in the chunk itself.
    while (this.carryLen > 0) {
      const n = Math.min(this.need - this.carryLen, chunk.length - off);
      chunk.copy(this.carry, this.carryLen, off, off + n);
      this.carryLen += n;
      off += n;
      if (this.carryLen < this.need) return;
      const piece = this.carry.subarray(0, this.carryLen);
      // 0 when only a header was complete: it stays at the carry's start, the frame to come.
      if (this.frames(piece, 0) === piece.length) this.carryLen = 0;
      if (this.closed) return;
    }
    const end = this.frames(chunk, off);
    if (end < chunk.length) this.carryLen = chunk.copy(this.carry, 0, end);
  }

  /** Handles the whole frames in buf from `off`; returns where an incomplete one starts (and sets `need`). */
  private frames(buf: Buffer, off: number): number {
    while (buf.length - off >= FRAME_HEADER) {
      const len = (buf[off]! << 16) | (buf[off + 1]! << 8) | buf[off + 2]!;
      if (len > MAX_FRAME) throw new ConnectionError(FRAME_SIZE_ERROR, `frame of ${len} bytes`);
      if (buf.length - off < FRAME_HEADER + len) {
        this.need = FRAME_HEADER + len;
        return off;
      }
      const type = buf[off + 3]!;
      const flags = buf[off + 4]!;
      const id = buf.readUInt32BE(off + 5) & MAX_WINDOW;
      const payload = buf.subarray(off + FRAME_HEADER, off + FRAME_HEADER + len);
      off += FRAME_HEADER + len;
      this.onFrame(type, flags, id, payload);
      if (this.closed) return buf.length;
    }
    if (off < buf.length) this.need = FRAME_HEADER;
    return off;
  }

  private onFrame(type: number, flags: number, id: number, p: Buffer): void {
    if (this.block && type !== CONTINUATION) throw new ConnectionError(PROTOCOL_ERROR, 'header block interrupted');
    if (!this.settingsSeen) {
      if (type !== SETTINGS || flags & ACK) throw new ConnectionError(PROTOCOL_ERROR, 'first frame is not SETTINGS');
      this.settingsSeen = true;
    }
    switch (type) {
      case DATA:
        return this.onDataFrame(flags, id, p);
      case HEADERS:
        return this.onHeadersFrame(flags, id, p);
      case CONTINUATION: {
        const b = this.block;
        if (!b || b.id !== id) throw new ConnectionError(PROTOCOL_ERROR, 'unexpected CONTINUATION');
        b.parts.push(Buffer.from(p)); // p is a view of a read
        b.size += p.length;
        if (b.size > this.server.opts.maxHeaderListSize * 2) throw new ConnectionError(PROTOCOL_ERROR, 'header block too large');
        if (flags & END_HEADERS) {
          this.block = undefined;
          this.onHeaderBlock(id, b.flags, Buffer.concat(b.parts, b.size));
        }
        return;
      }
      case PRIORITY:
        if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'PRIORITY on stream 0');
        return;
      case RST_STREAM: {
        if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'RST_STREAM on stream 0');
        if (p.length !== 4) throw new ConnectionError(FRAME_SIZE_ERROR, 'RST_STREAM size');
        const s = this.streams.get(id);
        if (s) s.onReset();
        else if (id > this.lastStreamId) throw new ConnectionError(PROTOCOL_ERROR, 'RST_STREAM on an idle stream');
        return;
      }
      case SETTINGS:
        return this.onSettings(flags, id, p);
      case PUSH_PROMISE:
        throw new ConnectionError(PROTOCOL_ERROR, 'PUSH_PROMISE from a client');
      case PING:
        if (id !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'PING on a stream');
        if (p.length !== 8) throw new ConnectionError(FRAME_SIZE_ERROR, 'PING size');
        if (!(flags & ACK)) this.frame(PING, ACK, 0, Buffer.from(p));
        return;
      case GOAWAY:
        if (id !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'GOAWAY on a stream');
        // The client opens no more streams; those in progress finish.
        this.goingAway = true;
        if (this.streams.size === 0) this.socket.end();
        return;
      case WINDOW_UPDATE: {
        if (p.length !== 4) throw new ConnectionError(FRAME_SIZE_ERROR, 'WINDOW_UPDATE size');
        const inc = p.readUInt32BE(0) & MAX_WINDOW;
        if (id === 0) {
          if (inc === 0) throw new ConnectionError(PROTOCOL_ERROR, 'WINDOW_UPDATE of 0');
          this.sendWindow += inc;
          if (this.sendWindow > MAX_WINDOW) throw new ConnectionError(FLOW_CONTROL_ERROR, 'connection window past 2^31-1');
          this.pumpBlocked();
          return;
        }
        const s = this.streams.get(id);
        if (!s) {
          if (id > this.lastStreamId) throw new ConnectionError(PROTOCOL_ERROR, 'WINDOW_UPDATE on an idle stream');
          return;
        }
        if (inc === 0) return s.streamError(PROTOCOL_ERROR);
        s.sendWindow += inc;
        if (s.sendWindow > MAX_WINDOW) return s.streamError(FLOW_CONTROL_ERROR);
        this.pump(s);
        return;
      }
      default:
        return; // unknown frame types are ignored (RFC 9113 §4.1)
    }
  }

  private onSettings(flags: number, id: number, p: Buffer): void {
    if (id !== 0) throw new ConnectionError(PROTOCOL_ERROR, 'SETTINGS on a stream');
    if (flags & ACK) {
      if (p.length !== 0) throw new ConnectionError(FRAME_SIZE_ERROR, 'SETTINGS ACK with a payload');
      return;
    }
    if (p.length % 6 !== 0) throw new ConnectionError(FRAME_SIZE_ERROR, 'SETTINGS size');
    for (let o = 0; o < p.length; o += 6) {
      const key = p.readUInt16BE(o);
      const v = p.readUInt32BE(o + 2);
      if (key === SETTINGS_ENABLE_PUSH && v > 1) throw new ConnectionError(PROTOCOL_ERROR, 'SETTINGS_ENABLE_PUSH');
      if (key === SETTINGS_INITIAL_WINDOW_SIZE) {
        if (v > MAX_WINDOW) throw new ConnectionError(FLOW_CONTROL_ERROR, 'SETTINGS_INITIAL_WINDOW_SIZE');
        const delta = v - this.peerInitialWindow;
        this.peerInitialWindow = v;
        for (const s of this.streams.values()) s.sendWindow += delta;
      } else if (key === SETTINGS_MAX_FRAME_SIZE) {
        if (v < 16_384 || v > 16_777_215) throw new ConnectionError(PROTOCOL_ERROR, 'SETTINGS_MAX_FRAME_SIZE');
        this.peerMaxFrame = v;
      }
      // HEADER_TABLE_SIZE: our encoder keeps no dynamic table; the rest concern a client.
    }
    this.frame(SETTINGS, ACK, 0);
    this.pumpBlocked();
  }

  private onHeadersFrame(flags: number, id: number, p: Buffer): void {
    if (id === 0 || id % 2 === 0) throw new ConnectionError(PROTOCOL_ERROR, `HEADERS on stream ${id}`);
    let start = 0;
    let end = p.length;
    if (flags & PADDED) {
      if (p.length < 1) throw new ConnectionError(PROTOCOL_ERROR, 'HEADERS padding');
      end -= p[0]!;
      start = 1;
    }
    if (flags & PRIORITY_FLAG) start += 5;
    if (start > end) throw new ConnectionError(PROTOCOL_ERROR, 'HEADERS padding');
    const fragment = p.subarray(start, end);
    if (flags & END_HEADERS) this.onHeaderBlock(id, flags, fragment);
    else this.block = { id, flags, parts: [Buffer.from(fragment)], size: fragment.length };
  }

  private onHeaderBlock(id: number, flags: number, block: Buffer): void {
    // Decoded even for a stream we refuse: the decoder's table must follow the client's.
    const headers = this.decoder.decode(block);
    const existing = this.streams.get(id);
    if (existing) {
      // Trailers from the client: gRPC clients send none, but they end the stream.
      if (!(flags & END_STREAM)) throw new ConnectionError(PROTOCOL_ERROR, 'HEADERS without END_STREAM on an open stream');
      existing.onRemoteEnd();
      return;
    }
    if (id <= this.lastStreamId) {
      this.resetStream(id, STREAM_CLOSED);
      return;
    }
    this.lastStreamId = id;
    if (this.goingAway || this.streams.size >= this.server.opts.maxConcurrentStreams) {
      this.resetStream(id, REFUSED_STREAM);
      return;
    }
    const s = new Stream(this, id, headers);
    this.streams.set(id, s);
    s.start(this.decoder.overLimit);
    if (flags & END_STREAM) s.onRemoteEnd();
  }

  private onDataFrame(flags: number, id: number, p: Buffer): void {
    if (id === 0) throw new ConnectionError(PROTOCOL_ERROR, 'DATA on stream 0');
    this.recvWindow -= p.length;
    if (this.recvWindow < 0) throw new ConnectionError(FLOW_CONTROL_ERROR, 'connection window exceeded');
    const s = this.streams.get(id);
    if (!s) {
      if (id > this.lastStreamId) throw new ConnectionError(PROTOCOL_ERROR, 'DATA on an idle stream');
      this.credit(p.length); // a stream we have closed: its bytes still count for the connection
      return;
    }
    let data = p;
    if (flags & PADDED) {
      if (p.length < 1 || p[0]! >= p.length) throw new ConnectionError(PROTOCOL_ERROR, 'DATA padding');
      data = p.subarray(1, p.length - p[0]!);
    }
    s.onData(data, p.length);
    if (flags & END_STREAM) s.onRemoteEnd();
  }
}

type OutItem = Uint8Array;

/** Messages this large get memory of their own, which recycle() can take back. */
const RECYCLED_FROM = 64 * 1024;
const RECYCLE_ROUND = 64 * 1024;
/** Recycled memory kept per call: enough for an ingest's pipeline (the gateway's 8 MiB in flight). */
const MAX_SPARE_BYTES = 16 * 1024 * 1024;
/** The memory messageMemory() allocated (weakly: a message never given back is just collected). */
const RECYCLABLE = new WeakSet<ArrayBufferLike>();

/** One gRPC call on its HTTP/2 stream. */
class Stream implements BidiCall {
  readonly path: string;
  deadline: number | undefined;
  cancelled = false;
  sendWindow: number;
  private recvWindow: number;
  private recvCredit = 0;
  private handler?: Handler;
  private cancelFns?: (() => void)[];
  private timer?: NodeJS.Timeout;
  // Request messages.
  private readonly prefix = Buffer.allocUnsafe(5);
  private prefixFill = 0;
  private msg?: Buffer;
  private msgFill = 0;
  private request?: Buffer;
  private messages = 0;
  private inbox: Buffer[] = [];
  private inboxBytes = 0;
  /** Memory of messages given back by recycle(), for later messages that fit. */
  private spares?: Buffer[];
  private spareBytes = 0;
  /** Stream window held back while the bidi handler's unread messages exceed a window. */
  private heldCredit = 0;
  private reader?: { resolve: (b: Buffer | undefined) => void; reject: (e: unknown) => void };
  private remoteClosed = false;
  // Response.
  private headersSent = false;
  private ended = false;
  private localClosed = false;
  private out: OutItem[] = [];
  private outHead = 0;
  private outBytes = 0;
  /** Bytes ever queued, and ever passed to the connection: positions for `written`. */
  private queuedTotal = 0;
  private sentTotal = 0;
  /** writeFrames callbacks, in order, each due once sentTotal reaches its `end`. */
  private written?: { end: number; fn: () => void }[];
  private trailers?: Buffer;
  private drainWaiters?: ((v: boolean) => void)[];

  constructor(private readonly conn: Connection, readonly id: number, private readonly headers: [string, string][]) {
    this.path = this.header(':path') ?? '';
    this.sendWindow = conn.peerInitialWindow;
    this.recvWindow = conn.server.opts.streamWindow;
  }

  get connection(): object {
    return this.conn;
  }

  header(name: string): string | undefined {
    const h = this.headers;
    for (let i = 0; i < h.length; i++) if (h[i]![0] === name) return h[i]![1];
    return undefined;
  }

  onCancel(fn: () => void): void {
    if (this.cancelled) fn();
    else (this.cancelFns ??= []).push(fn);
  }

  /** Checks the request's headers and picks its handler; a refused request ends here. */
  start(headersTooLarge: boolean): void {
    // The decoder dropped fields past the limit: answer as HTTP does, without guessing at the rest.
    if (headersTooLarge) return this.httpError('431');
    if (this.header(':method') !== 'POST') return this.httpError('405');
    const ct = this.header('content-type') ?? '';
    if (ct !== 'application/grpc' && !ct.startsWith('application/grpc+') && !ct.startsWith('application/grpc;')) return this.httpError('415');
    const timeout = this.header('grpc-timeout');
    if (timeout !== undefined) {
      const ms = parseGrpcTimeout(timeout);
      if (ms === undefined) return this.finish({ code: GrpcCode.Internal, message: `malformed grpc-timeout: ${timeout}` });
      this.deadline = Date.now() + ms;
      this.timer = setTimeout(() => this.expire(), Math.max(0, ms));
    }
    const h = this.conn.server.handlerFor(this.path);
    if (!('kind' in h)) return this.finish(h);
    this.handler = h;
    if (h.kind === 'bidi') this.run(() => h.fn(this));
  }

  /** An HTTP status instead of a gRPC call (wrong method or content type). */
  private httpError(status: string): void {
    this.localClosed = true;
    this.ended = true;
    this.conn.frame(HEADERS, END_HEADERS | END_STREAM, this.id, encodeHeaders([[':status', status]]));
    this.closeIfDone(true);
  }

  private run(fn: () => Promise<void>): void {
    let p: Promise<void>;
    try {
      p = fn();
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      () => this.finish({ code: GrpcCode.OK, message: '' }),
      (err) => this.finish(this.conn.server.opts.statusOf(err)),
    );
  }

  // ---- receiving ----

  onData(data: Buffer, frameBytes: number): void {
    this.recvWindow -= frameBytes;
    if (this.recvWindow < 0) return this.streamError(FLOW_CONTROL_ERROR);
    if (this.remoteClosed) return this.streamError(STREAM_CLOSED);
    if (!this.ended) this.parse(data);
    this.conn.credit(frameBytes);
    // A bidi handler that is behind reads what it has before the client may send more.
    if (this.inboxBytes > this.conn.server.opts.streamWindow) this.heldCredit += frameBytes;
    else this.giveBack(frameBytes);
  }

  /** Gives back stream window, in WINDOW_UPDATEs of at least a quarter window. */
  private giveBack(n: number): void {
    if (n <= 0 || this.remoteClosed || this.localClosed) return;
    this.recvCredit += n;
    if (this.recvCredit >= this.conn.server.opts.streamWindow >>> 2) {
      this.conn.frame(WINDOW_UPDATE, 0, this.id, u32(this.recvCredit));
      this.recvWindow += this.recvCredit;
      this.recvCredit = 0;
    }
  }

  private parse(data: Buffer): void {
    const max = this.conn.server.opts.maxReceiveMessage;
    let o = 0;
    while (o < data.length) {
      if (!this.msg) {
        if (this.prefixFill === 0 && data.length - o >= 5) {
          // The common case: the prefix, and often the whole message, inside this frame.
          const compressed = data[o]!;
          const len = data.readUInt32BE(o + 1);
          if (!this.checkPrefix(compressed, len, max)) return;
          o += 5;
          if (data.length - o >= len) {
            this.deliver(Buffer.from(data.subarray(o, o + len))); // a copy: data is a view of a read
            o += len;
          } else {
            this.msg = this.messageMemory(len);
            this.msgFill = data.copy(this.msg, 0, o);
            o = data.length;
          }
          continue;
        }
        const n = Math.min(5 - this.prefixFill, data.length - o);
        data.copy(this.prefix, this.prefixFill, o, o + n);
        this.prefixFill += n;
        o += n;
        if (this.prefixFill < 5) return;
        this.prefixFill = 0;
        const len = this.prefix.readUInt32BE(1);
        if (!this.checkPrefix(this.prefix[0]!, len, max)) return;
        if (len === 0) this.deliver(Buffer.alloc(0));
        else {
          this.msg = this.messageMemory(len);
          this.msgFill = 0;
        }
        continue;
      }
      const n = data.copy(this.msg, this.msgFill, o);
      this.msgFill += n;
      o += n;
      if (this.msgFill === this.msg.length) {
        const m = this.msg;
        this.msg = undefined;
        this.deliver(m);
      }
    }
  }

  private checkPrefix(compressed: number, len: number, max: number): boolean {
    if (compressed !== 0) {
      const enc = this.header('grpc-encoding');
      this.finish(enc && enc !== 'identity'
        ? { code: GrpcCode.Unimplemented, message: `grpc: Decompressor is not installed for grpc-encoding "${enc}"` }
        : { code: GrpcCode.Internal, message: 'grpc: compressed flag set with identity or empty encoding' });
      return false;
    }
    if (len > max) {
      this.finish({ code: GrpcCode.ResourceExhausted, message: `grpc: received message larger than max (${len} vs. ${max})` });
      return false;
    }
    return true;
  }

  /** Memory for a request message of `len` bytes that spans frames: a recycled one when it fits. */
  private messageMemory(len: number): Buffer {
    const spares = this.spares;
    if (spares) {
      for (let i = spares.length - 1; i >= 0; i--) {
        const b = spares[i]!;
        if (b.length < len) continue;
        spares.splice(i, 1);
        this.spareBytes -= b.length;
        return b.subarray(0, len);
      }
    }
    if (len < RECYCLED_FROM) return Buffer.allocUnsafe(len);
    // Its own memory (not node's shared pool), rounded up so that the next message, of
    // about the same size, fits.
    const whole = Buffer.allocUnsafeSlow(Math.ceil(len / RECYCLE_ROUND) * RECYCLE_ROUND);
    RECYCLABLE.add(whole.buffer);
    return whole.subarray(0, len);
  }

  recycle(msg: Buffer): void {
    if (!RECYCLABLE.has(msg.buffer) || this.ended) return;
    const whole = Buffer.from(msg.buffer);
    if (this.spareBytes + whole.length > MAX_SPARE_BYTES) return;
    const spares = (this.spares ??= []);
    if (spares.some((b) => b.buffer === msg.buffer)) return; // given back twice
    spares.push(whole);
    this.spareBytes += whole.length;
  }

  private deliver(m: Buffer): void {
    this.messages++;
    if (this.handler?.kind !== 'bidi') {
      if (this.messages > 1) return this.finish({ code: GrpcCode.Unimplemented, message: 'grpc: more than one request message for a unary request' });
      this.request = m;
      return;
    }
    if (this.reader) {
      const r = this.reader;
      this.reader = undefined;
      r.resolve(m);
      return;
    }
    this.inbox.push(m);
    this.inboxBytes += m.length + 5;
    this.conn.queue(m.length + 5);
  }

  /** Forgets the unread messages (the call is over), releasing the connection's window they held. */
  private dropInbox(): void {
    if (this.inboxBytes === 0) return;
    this.conn.queue(-this.inboxBytes);
    this.inbox = [];
    this.inboxBytes = 0;
  }

  read(): Promise<Buffer | undefined> {
    if (this.cancelled) return Promise.reject(new GrpcError(GrpcCode.Canceled, 'cancelled'));
    const m = this.inbox.shift();
    if (m) {
      this.inboxBytes -= m.length + 5;
      this.conn.queue(-(m.length + 5));
      if (this.heldCredit > 0 && this.inboxBytes <= this.conn.server.opts.streamWindow) {
        const h = this.heldCredit;
        this.heldCredit = 0;
        this.giveBack(h);
      }
      return Promise.resolve(m);
    }
    if (this.remoteClosed || this.ended) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => (this.reader = { resolve, reject }));
  }

  onRemoteEnd(): void {
    if (this.remoteClosed) return;
    this.remoteClosed = true;
    if (!this.ended && (this.msg || this.prefixFill > 0)) this.finish({ code: GrpcCode.Internal, message: 'grpc: stream ended inside a message' });
    const h = this.handler;
    if (!this.ended && h && h.kind !== 'bidi') {
      const req = this.request;
      if (!req) this.finish({ code: GrpcCode.Unimplemented, message: 'grpc: no request message for a unary request' });
      else if (h.kind === 'unary') {
        const fn = h.fn;
        this.run(async () => {
          this.write(await fn(req, this));
        });
      } else {
        const fn = h.fn;
        this.run(() => fn(req, this));
      }
    }
    if (this.reader) {
      const r = this.reader;
      this.reader = undefined;
      r.resolve(undefined);
    }
    this.closeIfDone(false);
  }

  /** The client reset the stream. */
  onReset(): void {
    this.remoteClosed = true;
    this.cancel(false);
  }

  /** A stream error (RFC 9113 §5.4.2): reset it and cancel the call. */
  streamError(code: number): void {
    this.conn.resetStream(this.id, code);
    this.remoteClosed = true;
    this.cancel(false);
  }

  /** Cancels the call; `reset` also tells the client (RST_STREAM CANCEL). */
  cancel(reset: boolean): void {
    if (this.cancelled) return;
    if (reset && !this.localClosed) this.conn.resetStream(this.id, CANCEL);
    this.abort();
    this.conn.removeStream(this);
  }

  /** Drops what is queued and runs the cancel listeners; the stream is left to the caller. */
  private abort(): void {
    this.cancelled = true;
    this.ended = true;
    this.localClosed = true;
    this.out = [];
    this.outHead = 0;
    this.outBytes = 0;
    this.written = undefined;
    this.trailers = undefined;
    clearTimeout(this.timer);
    this.dropInbox();
    if (this.reader) {
      const r = this.reader;
      this.reader = undefined;
      r.reject(new GrpcError(GrpcCode.Canceled, 'cancelled'));
    }
    for (const fn of this.drainWaiters?.splice(0) ?? []) fn(false);
    for (const fn of this.cancelFns?.splice(0) ?? []) {
      try {
        fn();
      } catch {
        // a cancel listener's failure is its own
      }
    }
  }

  /** The deadline passed: DEADLINE_EXCEEDED at once (whatever was queued), and the call cancelled. */
  private expire(): void {
    if (this.localClosed) return;
    const only = !this.headersSent;
    this.abort();
    this.conn.frame(HEADERS, END_HEADERS | END_STREAM, this.id, trailersBlock({ code: GrpcCode.DeadlineExceeded, message: 'context deadline exceeded' }, only));
    if (!this.remoteClosed) this.conn.resetStream(this.id, NO_ERROR);
    this.remoteClosed = true;
    this.conn.removeStream(this);
  }

  // ---- sending ----

  write(msg: Uint8Array): boolean {
    if (this.ended) return false;
    const max = this.conn.server.opts.maxSendMessage;
    if (msg.length > max) {
      this.finish({ code: GrpcCode.ResourceExhausted, message: `grpc: trying to send message larger than max (${msg.length} vs. ${max})` });
      return false;
    }
    this.queue(messagePrefix(msg.length));
    if (msg.length > 0) this.queue(msg);
    this.conn.pump(this);
    return this.outBytes < STREAM_HWM && !this.conn.congested;
  }

  writeFrames(frames: Uint8Array, written?: () => void): boolean {
    if (this.ended) return false;
    if (frames.length > 0) {
      this.queue(frames);
      if (written) (this.written ??= []).push({ end: this.queuedTotal, fn: written });
    } else written?.();
    this.conn.pump(this);
    return this.outBytes < STREAM_HWM && !this.conn.congested;
  }

  drained(): Promise<boolean> {
    if (this.ended) return Promise.resolve(false);
    if (this.outBytes < STREAM_HWM && !this.conn.congested) return Promise.resolve(true);
    return new Promise((resolve) => {
      (this.drainWaiters ??= []).push(resolve);
      if (this.conn.congested) this.conn.whenDrained(() => this.checkDrained());
    });
  }

  private checkDrained(): void {
    if (!this.drainWaiters?.length) return;
    if (this.ended) {
      for (const fn of this.drainWaiters.splice(0)) fn(false);
      return;
    }
    if (this.outBytes >= STREAM_HWM) return; // flush() calls again when the queue shrinks
    if (this.conn.congested) {
      this.conn.whenDrained(() => this.checkDrained());
      return;
    }
    for (const fn of this.drainWaiters.splice(0)) fn(true);
  }

  private queue(b: Uint8Array): void {
    if (!this.headersSent) {
      this.headersSent = true;
      this.conn.frame(HEADERS, END_HEADERS, this.id, RESPONSE_HEADERS);
    }
    this.out.push(b);
    this.outBytes += b.length;
    this.queuedTotal += b.length;
  }

  /** Passes queued bytes to the connection, with the writeFrames callbacks they complete. */
  private send(b: Uint8Array): void {
    this.sentTotal += b.length;
    const w = this.written;
    if (!w?.length || w[0]!.end > this.sentTotal) return this.conn.write(b);
    const due: (() => void)[] = [];
    while (w.length && w[0]!.end <= this.sentTotal) due.push(w.shift()!.fn);
    this.conn.write(b, (err) => {
      if (!err) for (const fn of due) fn();
    });
  }

  hasPending(): boolean {
    return this.outBytes > 0;
  }

  /** Sends queued data as the windows allow, then the trailers once nothing is left. */
  flush(): void {
    const c = this.conn;
    while (this.outBytes > 0) {
      const room = Math.min(this.sendWindow, c.sendWindow);
      if (room <= 0) break;
      // Gather up to one frame's worth from the queue.
      const limit = Math.min(room, c.peerMaxFrame);
      let head = this.out[this.outHead]!;
      if (head.length <= limit) {
        // Join small items into one frame (a message's prefix and body, a batch of messages).
        let size = head.length;
        let n = 1;
        while (this.outHead + n < this.out.length && size + this.out[this.outHead + n]!.length <= limit) size += this.out[this.outHead + n++]!.length;
        c.write(frameHeader(size, DATA, 0, this.id));
        for (let i = 0; i < n; i++) this.send(this.out[this.outHead + i]!);
        this.outHead += n;
        this.consume(size);
      } else {
        c.write(frameHeader(limit, DATA, 0, this.id));
        this.send(head.subarray(0, limit));
        head = head.subarray(limit);
        this.out[this.outHead] = head;
        this.consume(limit);
      }
      if (this.outHead > 64 && this.outHead * 2 > this.out.length) {
        this.out = this.out.slice(this.outHead);
        this.outHead = 0;
      }
    }
    if (this.outBytes === 0 && this.outHead > 0) {
      this.out = [];
      this.outHead = 0;
    }
    if (this.outBytes < STREAM_HWM) this.checkDrained();
    if (this.outBytes === 0 && this.trailers) {
      const t = this.trailers;
      this.trailers = undefined;
      c.frame(HEADERS, END_HEADERS | END_STREAM, this.id, t);
      this.localClosed = true;
      clearTimeout(this.timer);
      this.closeIfDone(true);
    }
  }

  private consume(n: number): void {
    this.outBytes -= n;
    this.sendWindow -= n;
    this.conn.sendWindow -= n;
  }

  /** Ends the call with `status`, after the messages already queued. */
  finish(status: Status): void {
    if (this.ended) return;
    this.ended = true;
    const only = !this.headersSent;
    this.trailers = trailersBlock(status, only);
    this.headersSent = true;
    // Nothing more is read after an error.
    if (status.code !== GrpcCode.OK) this.dropInbox();
    this.conn.pump(this);
  }

  /**
   * Forgets the stream once both sides are done. When we finished first (an error before the
   * client's half-close), RST_STREAM NO_ERROR tells the client to stop sending (RFC 9113 §8.1).
   */
  private closeIfDone(weJustClosed: boolean): void {
    if (!this.localClosed || this.cancelled) return;
    if (!this.remoteClosed && weJustClosed) {
      this.conn.resetStream(this.id, NO_ERROR);
      this.remoteClosed = true;
    }
    if (this.remoteClosed) {
      this.dropInbox();
      this.conn.removeStream(this);
    }
  }
}
