// Shared by the content kill -9 resume tests (disk and S3 backends): the ingest's offset
// as a client sees it, polling, and the random blob they ingest.
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { content as api } from '@flotilla/api';

/** The ingest's offset through the Content API's Status call (NotFound: -1). */
export function status(socket: string, ns: string, ref: string): Promise<{ code: number; offset: number }> {
  const client = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set('containerd-namespace', ns);
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      '/containerd.services.content.v1.Content/Status',
      (m: api.StatusRequest) => Buffer.from(api.StatusRequest.encode(m).finish()),
      (b: Buffer) => api.StatusResponse.decode(b),
      { ref },
      md,
      (err, res) => {
        client.close();
        resolve(err ? { code: err.code, offset: -1 } : { code: 0, offset: res!.status!.offset });
      },
    );
  });
}

export async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Writes `size` random bytes to <dir>/blob; returns the path and its digest. */
export async function writeRandomBlob(dir: string, size: number): Promise<{ file: string; dgst: string }> {
  const CHUNK = 1 << 20;
  const file = path.join(dir, 'blob');
  const hash = createHash('sha256');
  const fh = await fs.open(file, 'w');
  const buf = Buffer.alloc(CHUNK);
  for (let off = 0; off < size; off += CHUNK) {
    randomFillSync(buf);
    hash.update(buf);
    await fh.write(buf);
  }
  await fh.close();
  return { file, dgst: 'sha256:' + hash.digest('hex') };
}
