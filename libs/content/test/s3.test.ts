// The S3 backend against a real S3 server (s3rver through libs/testing): multipart
// commits, resume after a writer that never closed, atomic visibility, ranged reads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { S3Backend } from '@flotilla/content';
import { isAlreadyExists, isFailedPrecondition, isNotFound } from '@flotilla/errdefs';
import { startS3, type TestS3 } from '@flotilla/testing';

const MiB = 1024 * 1024;
const sha = (b: Uint8Array) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const key = (t: { name: string }) => createHash('sha256').update(t.name).digest('hex');

let s3: TestS3;
let n = 0;
/** A backend under its own prefix, so tests do not see one another's objects. */
function backend(prefix = `t${n++}/`): S3Backend {
  return new S3Backend({ endpoint: s3.endpoint, bucket: s3.bucket, accessKey: s3.accessKey, secretKey: s3.secretKey, region: s3.region, prefix, partSize: 5 * MiB });
}

async function readAll(b: S3Backend, dgst: string, offset = 0, length = 0, chunk = 1 << 20): Promise<{ data: Buffer; pieces: { offset: number; size: number }[] }> {
  const bufs: Buffer[] = [];
  const pieces: { offset: number; size: number }[] = [];
  for await (const p of b.read(dgst, offset, length, chunk)) {
    bufs.push(Buffer.from(p.data));
    pieces.push({ offset: p.offset, size: p.data.length });
  }
  return { data: Buffer.concat(bufs), pieces };
}

async function objectNames(b: S3Backend, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of b.client.listObjectsV2(b.bucket, prefix, true) as AsyncIterable<{ name?: string }>) if (o.name) out.push(o.name);
  return out.sort();
}

before(async () => {
  s3 = await startS3();
});
after(async () => {
  await s3?.stop();
});

test('init creates a missing bucket', async () => {
  const b = new S3Backend({ endpoint: s3.endpoint, bucket: 'made-by-init', accessKey: s3.accessKey, secretKey: s3.secretKey });
  assert.equal(await b.client.bucketExists('made-by-init'), false);
  await b.init();
  await b.init();
  assert.equal(await b.client.bucketExists('made-by-init'), true);
});

test('a small blob: one PUT, visible only after commit, ranged reads', async (t) => {
  const b = backend();
  await b.init();
  const data = randomBytes(3000);
  const w = await b.writer(key(t), 'small', data.length);
  await w.write(data.subarray(0, 1000));
  await w.write(data.subarray(1000));
  assert.equal(w.digest(), sha(data));
  await assert.rejects(b.stat(sha(data)), isNotFound);
  const r = await w.commit(data.length, sha(data));
  assert.deepEqual(r, { digest: sha(data), size: data.length });
  assert.deepEqual(await b.stat(sha(data)), { size: data.length });
  assert.deepEqual((await readAll(b, sha(data))).data, data);
  const part = await readAll(b, sha(data), 100, 1500, 512);
  assert.deepEqual(part.data, data.subarray(100, 1600));
  assert.deepEqual(part.pieces, [{ offset: 100, size: 512 }, { offset: 612, size: 512 }, { offset: 1124, size: 476 }]);
  assert.deepEqual((await readAll(b, sha(data), 2900)).data, data.subarray(2900));
  // The ingest is gone with the commit.
  await assert.rejects(b.ingestStatus(key(t)), isNotFound);
  await b.delete(sha(data));
  await assert.rejects(b.stat(sha(data)), isNotFound);
});

test('a large blob is uploaded in parts and assembled by a verified multipart upload', async (t) => {
  const b = backend('large/');
  await b.init();
  const data = randomBytes(12 * MiB + 12345);
  const w = await b.writer(key(t), 'large', 0);
  for (let i = 0; i < data.length; i += 700_000) await w.write(data.subarray(i, i + 700_000));
  // Two flushed data objects of >= 5 MiB; the tail is still in memory.
  const parts = await objectNames(b, 'large/ingest/');
  assert.equal(parts.filter((p) => p.includes('/data/')).length, 2, parts.join(' '));
  assert.equal(w.status().offset, data.length);
  await assert.rejects(w.commit(data.length + 1, ''), isFailedPrecondition);
  await assert.rejects(w.commit(0, sha(Buffer.from('other'))), isFailedPrecondition);
  await w.commit(data.length, sha(data));
  const st = await b.client.statObject(b.bucket, `large/blobs/sha256/${sha(data).slice(7)}`);
  assert.equal(st.size, data.length);
  assert.deepEqual((await readAll(b, sha(data))).data.equals(data), true);
  const mid = await readAll(b, sha(data), 5 * MiB - 10, 20);
  assert.deepEqual(mid.data, data.subarray(5 * MiB - 10, 5 * MiB + 10));
  assert.deepEqual(await objectNames(b, 'large/ingest/'), []);
});

test('an ingest survives its writer: close persists, a crash keeps what was flushed, resume rebuilds the hash', async (t) => {
  const b = backend();
  await b.init();
  const data = randomBytes(11 * MiB);
  // Closed cleanly after 1 MiB: everything is kept.
  let w = await b.writer(key(t), 'resume', data.length);
  await w.write(data.subarray(0, MiB));
  await w.close();
  let st = await b.ingestStatus(key(t));
  assert.equal(st.offset, MiB);
  assert.equal(st.ref, 'resume');
  assert.equal(st.total, data.length);
  // A new backend (a restarted service) resumes at that offset with the right hash.
  const b2 = new S3Backend({ endpoint: s3.endpoint, bucket: s3.bucket, accessKey: s3.accessKey, secretKey: s3.secretKey, prefix: (b as unknown as { prefix: string }).prefix, partSize: 5 * MiB });
  w = await b2.writer(key(t), 'resume', data.length);
  assert.equal(w.offset, MiB);
  assert.equal(w.digest(), sha(data.subarray(0, MiB)));
  // Written past one part, then the writer is dropped without close (the process died):
  // the flushed part survives, the buffered tail does not.
  await w.write(data.subarray(MiB, 7 * MiB));
  st = await b2.ingestStatus(key(t));
  assert.equal(st.offset, 7 * MiB);
  w = await backend((b as unknown as { prefix: string }).prefix).writer(key(t), 'resume', data.length);
  assert.equal(w.offset, 7 * MiB);
  assert.equal(w.digest(), sha(data.subarray(0, 7 * MiB)));
  await w.write(data.subarray(7 * MiB));
  await w.commit(data.length, sha(data));
  assert.ok((await readAll(b, sha(data))).data.equals(data));
});

test('another ref or total starts over; truncate and abort remove the data', async (t) => {
  const b = backend();
  await b.init();
  let w = await b.writer(key(t), 'one', 100);
  await w.write(Buffer.alloc(50, 1));
  await w.close();
  w = await b.writer(key(t), 'one', 200);
  assert.equal(w.offset, 0, 'a different total is not resumable');
  await w.write(Buffer.alloc(60, 2));
  await w.close();
  w = await b.writer(key(t), 'two', 0);
  assert.equal(w.offset, 0, 'a different ref is not resumable');
  await w.write(Buffer.alloc(70, 3));
  await w.truncate(0);
  assert.equal(w.offset, 0);
  assert.equal(w.digest(), sha(Buffer.alloc(0)));
  await assert.rejects(w.truncate(5), (e) => /unsupported size/.test(String(e)));
  await w.write(Buffer.from('after truncate'));
  await w.close();
  assert.equal((await b.ingestStatus(key(t))).offset, 'after truncate'.length);
  await b.abort(key(t));
  await assert.rejects(b.ingestStatus(key(t)), isNotFound);
  await assert.rejects(b.abort(key(t)), isNotFound);
  assert.deepEqual(await objectNames(b, `${(b as unknown as { prefix: string }).prefix}ingest/`), []);
});

test('committing a digest the store already holds is AlreadyExists and drops the ingest', async (t) => {
  const b = backend();
  await b.init();
  const data = Buffer.from('twice');
  let w = await b.writer(key(t) + '1', 'a', 0);
  await w.write(data);
  await w.commit(0, '');
  w = await b.writer(key(t) + '2', 'b', 0);
  await w.write(data);
  await assert.rejects(w.commit(0, sha(data)), isAlreadyExists);
  await assert.rejects(b.ingestStatus(key(t) + '2'), isNotFound);
});

test('a data object altered in the store is caught on commit, the blob never appears', async (t) => {
  const b = backend();
  await b.init();
  const prefix = (b as unknown as { prefix: string }).prefix;
  const data = randomBytes(6 * MiB);
  const w = await b.writer(key(t), 'tampered', 0);
  await w.write(data);
  await w.write(Buffer.from('tail'));
  const [first] = (await objectNames(b, `${prefix}ingest/`)).filter((p) => p.includes('/data/'));
  assert.ok(first);
  // Same size, one byte different: only a digest computed from the bytes can tell.
  const bad = Buffer.from(data);
  bad[1234] = bad[1234]! ^ 0xff;
  await b.client.putObject(b.bucket, first, bad, bad.length);
  const full = Buffer.concat([data, Buffer.from('tail')]);
  await assert.rejects(w.commit(full.length, sha(full)), isFailedPrecondition);
  await assert.rejects(b.stat(sha(full)), isNotFound);
  await assert.rejects(b.stat(sha(Buffer.concat([bad, Buffer.from('tail')]))), isNotFound);
});

test('invalid digests and keys are InvalidArgument', async () => {
  const b = backend();
  assert.throws(() => b.blobKey('sha256:xyz'), /invalid digest/);
  await assert.rejects(b.writer('../x', 'r', 0), /invalid ingest key/);
});
