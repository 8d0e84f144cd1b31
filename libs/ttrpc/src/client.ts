// ttrpc client over a unix socket: concurrent calls multiplexed by stream id.
import net from 'node:net';
import { ErrorClass, classOfGrpcCode, errUnavailable, withClass, ContainerdError } from '@flotilla/errdefs';
import { FrameReader, TYPE_RESPONSE, TYPE_REQUEST, decodeResponse, encodeRequest, frame } from './wire.js';

interface Pending {
  resolve: (b: Uint8Array) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
}

export interface CallOptions {
  timeoutMs?: number;
  metadata?: Record<string, string>;
}

export class TtrpcClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closed = false;
  private readonly closeHandlers: (() => void)[] = [];

  private constructor(private readonly sock: net.Socket) {
    const reader = new FrameReader();
    sock.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = reader.push(chunk);
      } catch (err) {
        sock.destroy(err as Error);
        return;
      }
      for (const f of frames) {
        if (f.type !== TYPE_RESPONSE) continue;
        const p = this.pending.get(f.streamId);
        if (!p) continue;
        this.pending.delete(f.streamId);
        clearTimeout(p.timer);
        const res = decodeResponse(f.payload);
        if (res.status && res.status.code !== 0) {
          p.reject(withClass(classOfGrpcCode(res.status.code), res.status.message));
        } else {
          p.resolve(res.payload);
        }
      }
    });
    sock.on('close', () => this.shutdown());
    sock.on('error', () => this.shutdown());
  }

  static connect(socketPath: string): Promise<TtrpcClient> {
    const path = socketPath.replace(/^unix:\/\//, '');
    return new Promise((resolve, reject) => {
      const sock = net.connect(path);
      sock.once('connect', () => {
        sock.removeListener('error', reject);
        resolve(new TtrpcClient(sock));
      });
      sock.once('error', (err) => reject(errUnavailable(`ttrpc: connect ${path}: ${err.message}`, { cause: err })));
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  onClose(cb: () => void): void {
    if (this.closed) cb();
    else this.closeHandlers.push(cb);
  }

  call(service: string, method: string, payload: Uint8Array, opts: CallOptions = {}): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(errUnavailable('ttrpc: closed'));
    const id = this.nextId;
    this.nextId += 2;
    return new Promise((resolve, reject) => {
      const p: Pending = { resolve, reject };
      if (opts.timeoutMs) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new ContainerdError(ErrorClass.DeadlineExceeded, `ttrpc: ${service}/${method}: context deadline exceeded`));
        }, opts.timeoutMs);
      }
      this.pending.set(id, p);
      const req = encodeRequest({
        service,
        method,
        payload,
        timeoutNano: (opts.timeoutMs ?? 0) * 1_000_000,
        metadata: Object.entries(opts.metadata ?? {}).map(([key, value]) => ({ key, value })),
      });
      this.sock.write(frame(id, TYPE_REQUEST, req));
    });
  }

  close(): void {
    this.sock.destroy();
    this.shutdown();
  }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(errUnavailable('ttrpc: closed'));
    }
    this.pending.clear();
    for (const cb of this.closeHandlers) cb();
  }
}
