// ttrpc server on a unix socket. Requests on one connection are served concurrently and
// answered by stream id; handler errors travel as google.rpc.Status with the gRPC code of
// their containerd error class.
import fs from 'node:fs/promises';
import net from 'node:net';
import {
  ContainerdError, ErrorClass, GrpcCode, classOf, errAlreadyExists, grpcCodeOf, messageOf,
} from '@flotilla/errdefs';
import {
  FrameReader, MAX_MESSAGE, TYPE_REQUEST, TYPE_RESPONSE, decodeRequest, encodeResponse, frame, oversizeMessage,
  type TtrpcResponse,
} from './wire.js';

export interface TtrpcContext {
  /** Request metadata; for a key sent more than once, the last value. */
  metadata: Record<string, string>;
  /** Aborted at the caller's deadline (timeout_nano) or when the connection closes. */
  signal: AbortSignal;
}

export type TtrpcHandler = (payload: Uint8Array, ctx: TtrpcContext) => Promise<Uint8Array>;

const EMPTY = new Uint8Array(0);

function statusResponse(code: number, message: string): TtrpcResponse {
  return { status: { code, message, details: [] }, payload: EMPTY };
}

export class TtrpcServer {
  private readonly handlers = new Map<string, Map<string, TtrpcHandler>>();
  private server?: net.Server;
  private socketPath?: string;
  private readonly conns = new Set<net.Socket>();

  /** Registers `service`/`method` (full proto names, e.g. containerd.task.v2.Task / Create). */
  register(service: string, method: string, handler: TtrpcHandler): void {
    let methods = this.handlers.get(service);
    if (!methods) this.handlers.set(service, (methods = new Map()));
    methods.set(method, handler);
  }

  /**
   * Listens on a filesystem unix socket (never abstract) with `mode`. A stale socket file
   * is replaced; a live one (something answers on it) is AlreadyExists.
   */
  async listen(socketPath: string, mode = 0o600): Promise<void> {
    if (this.server) throw errAlreadyExists(`ttrpc server already listening on ${this.socketPath}`);
    const st = await fs.lstat(socketPath).catch(() => undefined);
    if (st) {
      if (!st.isSocket()) throw errAlreadyExists(`ttrpc: listen ${socketPath}: not a socket`);
      if (await canConnect(socketPath)) throw errAlreadyExists(`ttrpc: listen ${socketPath}: address in use`);
      await fs.rm(socketPath, { force: true });
    }
    const server = net.createServer((sock) => this.serve(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    try {
      await fs.chmod(socketPath, mode);
    } catch (err) {
      server.close();
      throw err;
    }
    this.server = server;
    this.socketPath = socketPath;
  }

  private serve(sock: net.Socket): void {
    this.conns.add(sock);
    const connAbort = new AbortController();
    sock.on('close', () => {
      this.conns.delete(sock);
      connAbort.abort();
    });
    sock.on('error', () => sock.destroy());
    const reader = new FrameReader();
    const reply = (streamId: number, res: TtrpcResponse) => {
      if (sock.destroyed) return;
      let body = encodeResponse(res);
      if (body.length > MAX_MESSAGE) body = encodeResponse(statusResponse(GrpcCode.ResourceExhausted, oversizeMessage(body.length)));
      sock.write(frame(streamId, TYPE_RESPONSE, body));
    };
    sock.on('data', (chunk: Buffer) => {
      for (const f of reader.push(chunk)) {
        if (!f.payload) {
          reply(f.streamId, statusResponse(GrpcCode.ResourceExhausted, oversizeMessage(f.length)));
          continue;
        }
        if (f.type !== TYPE_REQUEST) continue;
        void this.dispatch(f.streamId, f.payload, connAbort.signal).then((res) => reply(f.streamId, res));
      }
    });
  }

  private async dispatch(streamId: number, payload: Buffer, connSignal: AbortSignal): Promise<TtrpcResponse> {
    let req;
    try {
      req = decodeRequest(payload);
    } catch (err) {
      return statusResponse(GrpcCode.InvalidArgument, `unmarshal request error: ${messageOf(err)}`);
    }
    if (streamId % 2 !== 1) return statusResponse(GrpcCode.InvalidArgument, 'StreamID must be odd for client initiated streams');
    const methods = this.handlers.get(req.service);
    if (!methods) return statusResponse(GrpcCode.Unimplemented, `service ${req.service}`);
    const handler = methods.get(req.method);
    if (!handler) return statusResponse(GrpcCode.Unimplemented, `method ${req.method}`);
    const signals = [connSignal];
    if (req.timeoutNano > 0) signals.push(AbortSignal.timeout(Math.max(1, Math.ceil(req.timeoutNano / 1_000_000))));
    const ctx: TtrpcContext = {
      metadata: Object.fromEntries(req.metadata.map((kv) => [kv.key, kv.value])),
      signal: signals.length === 1 ? connSignal : AbortSignal.any(signals),
    };
    try {
      return { payload: await handler(req.payload, ctx) };
    } catch (err) {
      const cls = isTimeout(err) ? ErrorClass.DeadlineExceeded : classOf(err);
      return statusResponse(grpcCodeOf(cls), messageOf(err));
    }
  }

  /** Stops listening, drops open connections and removes the socket file. */
  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    if (this.socketPath) await fs.rm(this.socketPath, { force: true });
  }
}

function isTimeout(err: unknown): boolean {
  return !(err instanceof ContainerdError) && (err as Error | undefined)?.name === 'TimeoutError';
}

function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
