// content-restart.test.ts with the S3 backend: a content service killed with SIGKILL in
// the middle of a 64 MiB ingest kept in S3 (s3rver). The ingest survives as the data
// objects uploaded before the kill (bytes still buffered in the dead process are lost,
// so the offset may be below what Status said before the kill); the client resumes at
// the reported offset with the Go client, the restarted service rebuilt the hash from the
// bucket, and the commit verifies the digest. No partial blob is listed or in the bucket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'minio';
import { status, until, writeRandomBlob } from './content-support.js';
import { buildGoTest, runGoTest, startS3, startStack, testNamespace, type Stack, type TestS3 } from '@flotilla/testing';

/** ctr's stdin is fed a piece this size at a time, slowly, so the kill lands mid-ingest. */
const CHUNK = 1 << 20;
const SIZE = 64 << 20;

test('S3 backend: a content service killed -9 mid-ingest, the client resumes at the reported offset and the digest verifies', { timeout: 10 * 60_000 }, async (t) => {
  const ns = testNamespace(t.name);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-content-restart-'));
  const { file, dgst } = await writeRandomBlob(dir, SIZE);
  const bin = await buildGoTest('content');
  let stack: Stack | undefined;
  let s3: TestS3 | undefined;
  const keys = async (prefix: string) => {
    const c = new Client({ endPoint: '127.0.0.1', port: Number(new URL(s3!.endpoint).port), useSSL: false, accessKey: s3!.accessKey, secretKey: s3!.secretKey, region: s3!.region, pathStyle: true });
    const out: string[] = [];
    for await (const o of c.listObjectsV2(s3!.bucket, prefix, true) as AsyncIterable<{ name?: string }>) if (o.name) out.push(o.name);
    return out;
  };
  try {
    s3 = await startS3();
    stack = await startStack({ env: s3.env });
    const s = stack;
    // ctr reads the blob from a pipe we feed slowly, so the kill lands mid-stream.
    const ctr = spawn('ctr', ['--address', s.socket, '--namespace', ns, 'content', 'ingest', '--expected-size', String(SIZE), '--expected-digest', dgst, 'big'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    ctr.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number>((resolve) => ctr.on('close', (code) => resolve(code ?? 128)));
    let fed = 0;
    let stop = false;
    ctr.stdin.on('error', () => (stop = true));
    void (async () => {
      const src = await fs.open(file, 'r');
      const buf = Buffer.alloc(CHUNK);
      try {
        while (!stop && fed < SIZE) {
          const { bytesRead } = await src.read(buf, 0, CHUNK, fed);
          if (!ctr.stdin.write(Buffer.from(buf.subarray(0, bytesRead)))) await new Promise((r) => ctr.stdin.once('drain', r));
          fed += bytesRead;
          await new Promise((r) => setTimeout(r, 40));
        }
      } finally {
        await src.close();
      }
    })();
    ctr.on('close', () => (stop = true));

    // Well into the ingest: nothing is listed, then the content service dies.
    const before = await until('the ingest to pass 24 MiB', async () => {
      const st = await status(s.socket, ns, 'big');
      return st.offset >= 24 << 20 ? st.offset : undefined;
    });
    assert.ok(before < SIZE);
    assert.equal((await s.ctr(['content', 'ls', '-q'], { namespace: ns })).stdout, '', 'a partial blob is listed');
    const pid = s.supervisor.pids().content;
    assert.ok(pid, 'content service pid');
    process.kill(pid, 'SIGKILL');
    const code = await exited;
    assert.notEqual(code, 0, `ctr content ingest survived the kill: ${stderr}`);
    ctr.stdin.destroy();

    // Restarted by the supervisor: the ingest is still there, still unlisted.
    const offset = await until('the restarted service to report the ingest', async () => {
      const st = await status(s.socket, ns, 'big');
      return st.code === 0 ? st.offset : undefined;
    });
    assert.ok(s.supervisor.restarts('content') >= 1);
    // At least the data objects flushed before Status reported `before` (8 MiB parts).
    assert.ok(offset >= before - (9 << 20) && offset > 0 && offset < SIZE && offset <= fed, `offset ${offset} (before the kill ${before}, fed ${fed})`);
    assert.ok((await keys('blobs/')).length === 0, 'a blob in the bucket before the commit');
    assert.ok((await keys('ingest/')).some((k) => k.endsWith('/meta.json')), 'no ingest in the bucket');
    assert.equal((await s.ctr(['content', 'ls', '-q'], { namespace: ns })).stdout, '', 'a partial blob is listed after restart');
    const active = await s.ctr(['content', 'active'], { namespace: ns });
    assert.match(active.stdout, /^big\s/m);

    // The Go client resumes from the reported offset and commits with the digest.
    const r = await runGoTest(bin, ['-test.run', '^TestResumeIngest$'], {
      FLOTILLA_ADDRESS: s.socket,
      FLOTILLA_RESUME_REF: 'big',
      FLOTILLA_RESUME_NS: ns,
      FLOTILLA_RESUME_FILE: file,
      FLOTILLA_RESUME_OFFSET: String(offset),
    });
    assert.deepEqual({ passed: r.passed, failed: r.failed }, { passed: ['TestResumeIngest'], failed: [] }, r.output);
    assert.match(r.output, new RegExp(`resuming big at offset ${offset} of ${SIZE}`));

    assert.equal((await s.ctr(['content', 'ls', '-q'], { namespace: ns })).stdout.trim(), dgst);
    assert.equal((await s.ctr(['content', 'active'], { namespace: ns })).stdout.trim().split('\n').length, 1, 'ingest left after commit');
    // The server verified the digest at commit; its size is the blob's.
    const ls = await s.ctr(['content', 'ls'], { namespace: ns });
    assert.match(ls.stdout, new RegExp(`^${dgst}\\s+67\\.11MB\\s`, 'm'));
    assert.deepEqual(await keys('blobs/'), [`blobs/sha256/${dgst.slice(7)}`]);
    assert.deepEqual(await keys('ingest/'), []);
  } finally {
    await stack?.stop();
    await s3?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
});
