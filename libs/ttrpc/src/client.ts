// ttrpc client over a unix socket. Calls are multiplexed on one connection by stream id
// (odd, from 1, step 2); responses may come back in any order.
import net from 'node:net';
import {
  ContainerdError, ErrorClass, GrpcCode, classOfGrpcCode, errInvalidArgument, errUnavailable,
} from '@flotilla/errdefs';
import {
  FrameReader, MAX_MESSAGE, TYPE_REQUEST, TYPE_RESPONSE, decodeResponse, encodeRequest, frame, oversizeMessage,
} from './wire.js';

export interface CallOptions {
  /** Deadline for this call; sent to the server as timeout_nano and enforced locally. */
  timeoutMs?: number;
  /** Request metadata (ttrpc KeyValue pairs), e.g. containerd-namespace-ttrpc. */
  metadata?: Record<string, string>;
  /** Aborting rejects the call with a Canceled error (the server is not told, as in ttrpc). */
  signal?: AbortSignal;
}

interface Pending {
  resolve: (b: Uint8Array) => void;
  reject: (e: Error) => void;
  /** Detaches the deadline timer and abort listener. */
  done: () => void;
}

/**
 * The error a non-OK status becomes, as containerd's errdefs.FromGRPC builds it: the class
 * from the code, the message rebased so it ends in exactly one ": <class>".
 */
export function errorFromStatus(code: number, message: string): ContainerdError {
  const cls = classOfGrpcCode(code);
  const base = message === cls ? '' : message.endsWith(`: ${cls}`) ? message.slice(0, -(cls.length + 2)) : message;
  return new ContainerdError(cls, base ? `${base}: ${cls}` : cls);
}

/** The cause of every call failed because the connection is gone (ttrpc-go's ErrClosed). */
const ERR_CLOSED = new Error('ttrpc: closed');

function errClosed(): ContainerdError {
  return errUnavailable('ttrpc: closed', { cause: ERR_CLOSED });
}

/** Whether `err` is a call failed because the connection closed (errors.Is(err, ttrpc.ErrClosed)). */
export function isClosed(err: unknown): boolean {
  return err instanceof Error && err.cause === ERR_CLOSED;
}

export class TtrpcClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closed = false;
  private readonly closeHandlers: (() => void)[] = [];

  private constructor(private readonly sock: net.Socket, readonly address: string) {
    const reader = new FrameReader();
    sock.on('data', (chunk: Buffer) => {
      for (const f of reader.push(chunk)) {
        if (f.type !== TYPE_RESPONSE) continue;
        const p = this.pending.get(f.streamId);
        if (!p) continue; // a response for a call that already timed out or was aborted
        this.pending.delete(f.streamId);
        p.done();
        if (!f.payload) {
          p.reject(errorFromStatus(GrpcCode.ResourceExhausted, oversizeMessage(f.length)));
          continue;
        }
        let res;
        try {
          res = decodeResponse(f.payload);
        } catch (err) {
          p.reject(new ContainerdError(ErrorClass.Unknown, `ttrpc: malformed response: ${(err as Error).message}`));
          continue;
        }
        if (res.status && res.status.code !== GrpcCode.OK) p.reject(errorFromStatus(res.status.code, res.status.message));
        else p.resolve(res.payload);
      }
    });
    sock.on('close', () => this.shutdown());
    sock.on('error', () => this.shutdown());
  }

  /** Connects to `unix://<path>` or a plain socket path; failure is Unavailable. */
  static connect(socketPath: string): Promise<TtrpcClient> {
    const path = socketPath.replace(/^unix:\/\//, '');
    return new Promise((resolve, reject) => {
      const sock = net.connect(path);
      const onError = (err: Error) =>
        reject(errUnavailable(`ttrpc: dial ${path}: ${err.message}`, { cause: err }));
      sock.once('error', onError);
      sock.once('connect', () => {
        sock.removeListener('error', onError);
        resolve(new TtrpcClient(sock, socketPath));
      });
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Calls `cb` once when the connection ends, whoever ended it (at once if already closed). */
  onClose(cb: () => void): void {
    if (this.closed) queueMicrotask(cb);
    else this.closeHandlers.push(cb);
  }

  /**
   * One unary call. Resolves with the response payload; a non-OK status rejects with the
   * ContainerdError its code maps to; a lost connection rejects pending calls as Unavailable.
   */
  call(service: string, method: string, payload: Uint8Array, opts: CallOptions = {}): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(errClosed());
    if (opts.signal?.aborted) return Promise.reject(new ContainerdError(ErrorClass.Canceled, ErrorClass.Canceled));
    const req = encodeRequest({
      service,
      method,
      payload,
      timeoutNano: opts.timeoutMs ? Math.round(opts.timeoutMs * 1_000_000) : 0,
      metadata: Object.entries(opts.metadata ?? {}).map(([key, value]) => ({ key, value })),
    });
    if (req.length > MAX_MESSAGE) {
      return Promise.reject(errInvalidArgument(`ttrpc: ${service}/${method}: ${oversizeMessage(req.length)}`));
    }
    const id = this.nextId;
    this.nextId += 2;
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = () => {
        if (!this.pending.delete(id)) return;
        p.done();
        reject(new ContainerdError(ErrorClass.Canceled, ErrorClass.Canceled));
      };
      const p: Pending = {
        resolve,
        reject,
        done: () => {
          clearTimeout(timer);
          opts.signal?.removeEventListener('abort', onAbort);
        },
      };
      if (opts.timeoutMs) {
        timer = setTimeout(() => {
          if (!this.pending.delete(id)) return;
          p.done();
          reject(new ContainerdError(ErrorClass.DeadlineExceeded, ErrorClass.DeadlineExceeded));
        }, opts.timeoutMs);
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, p);
      this.sock.write(frame(id, TYPE_REQUEST, req));
    });
  }

  /** Closes the connection; pending calls reject as Unavailable and onClose handlers run. */
  close(): void {
    this.sock.destroy();
    this.shutdown();
  }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) {
      p.done();
      p.reject(errClosed());
    }
    this.pending.clear();
    for (const cb of this.closeHandlers.splice(0)) {
      try {
        cb();
      } catch {
        // A close handler's failure is its own; the others still run.
      }
    }
  }
}
