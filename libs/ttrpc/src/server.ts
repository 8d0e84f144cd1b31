// ttrpc server on a unix socket (mode 0600): what the shims forward their events to.
import fs from 'node:fs/promises';
import net from 'node:net';
import { classOf, grpcCodeOf, messageOf, GrpcCode } from '@flotilla/errdefs';
import { FrameReader, TYPE_REQUEST, TYPE_RESPONSE, decodeRequest, encodeResponse, frame } from './wire.js';

export type TtrpcHandler = (payload: Uint8Array, ctx: { metadata: Record<string, string> }) => Promise<Uint8Array>;

export class TtrpcServer {
  private readonly handlers = new Map<string, TtrpcHandler>();
  private server?: net.Server;
  private readonly conns = new Set<net.Socket>();

  register(service: string, method: string, handler: TtrpcHandler): void {
    this.handlers.set(`${service}/${method}`, handler);
  }

  async listen(socketPath: string, mode = 0o600): Promise<void> {
    await fs.rm(socketPath, { force: true });
    const server = net.createServer((sock) => this.serve(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    await fs.chmod(socketPath, mode);
    this.server = server;
  }

  private serve(sock: net.Socket): void {
    this.conns.add(sock);
    sock.on('close', () => this.conns.delete(sock));
    sock.on('error', () => sock.destroy());
    const reader = new FrameReader();
    sock.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = reader.push(chunk);
      } catch {
        sock.destroy();
        return;
      }
      for (const f of frames) {
        if (f.type !== TYPE_REQUEST) continue;
        void this.dispatch(sock, f.streamId, f.payload);
      }
    });
  }

  private async dispatch(sock: net.Socket, streamId: number, payload: Buffer): Promise<void> {
    let res;
    try {
      const req = decodeRequest(payload);
      const h = this.handlers.get(`${req.service}/${req.method}`);
      if (!h) {
        res = { status: { code: GrpcCode.Unimplemented, message: `${req.service}/${req.method} not implemented`, details: [] }, payload: new Uint8Array(0) };
      } else {
        const md = Object.fromEntries(req.metadata.map((kv) => [kv.key, kv.value]));
        res = { payload: await h(req.payload, { metadata: md }) };
      }
    } catch (err) {
      res = { status: { code: grpcCodeOf(classOf(err)), message: messageOf(err), details: [] }, payload: new Uint8Array(0) };
    }
    if (!sock.destroyed) sock.write(frame(streamId, TYPE_RESPONSE, encodeResponse(res)));
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
