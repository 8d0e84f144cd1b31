// A throwaway S3 server for tests: s3rver (an S3 implementation in Node over the
// filesystem, from npm; MinIO itself is not packaged here) on a port the kernel picks, in
// its own temp dir, with request signatures checked. What it does not cover is listed in
// docs/architecture.md ("Content", S3 backend).
import { createRequire } from 'node:module';
import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface TestS3 {
  /** `http://127.0.0.1:<port>` */
  endpoint: string;
  bucket: string;
  accessKey: string;
  secretKey: string;
  region: string;
  /** The FLOTILLA_CONTENT_BACKEND / FLOTILLA_S3_* variables selecting this server. */
  env: Record<string, string>;
  /** Stops the server and removes its temp dir. */
  stop(): Promise<void>;
}

interface S3rverLike {
  run(): Promise<AddressInfo>;
  close(cb: (err?: Error) => void): void;
}
type S3rverCtor = new (opts: Record<string, unknown>) => S3rverLike;

// s3rver is CommonJS without types; load it by name from the repository's node_modules.
const requireHere = createRequire(path.join(path.resolve(__dirname, '..', '..', '..'), 'package.json'));

/** Starts s3rver with one bucket (default `flotilla`). Its default account is S3RVER / S3RVER. */
export async function startS3(opts: { bucket?: string } = {}): Promise<TestS3> {
  const bucket = opts.bucket ?? 'flotilla';
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-s3-'));
  const S3rver = requireHere('s3rver') as S3rverCtor;
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    directory: dir,
    silent: true,
    // Path-style requests only, as the backend sends them.
    vhostBuckets: false,
    configureBuckets: [{ name: bucket }],
  });
  let addr: AddressInfo;
  try {
    addr = await server.run();
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true });
    throw err;
  }
  const endpoint = `http://127.0.0.1:${addr.port}`;
  const creds = { accessKey: 'S3RVER', secretKey: 'S3RVER', region: 'us-east-1' };
  let stopped: Promise<void> | undefined;
  return {
    endpoint,
    bucket,
    ...creds,
    env: {
      FLOTILLA_CONTENT_BACKEND: 's3',
      FLOTILLA_S3_ENDPOINT: endpoint,
      FLOTILLA_S3_BUCKET: bucket,
      FLOTILLA_S3_ACCESS_KEY: creds.accessKey,
      FLOTILLA_S3_SECRET_KEY: creds.secretKey,
      FLOTILLA_S3_REGION: creds.region,
    },
    stop: () =>
      (stopped ??= (async () => {
        await new Promise<void>((resolve) => server.close(() => resolve()));
        await fs.rm(dir, { recursive: true, force: true });
      })()),
  };
}
