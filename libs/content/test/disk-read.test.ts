// The disk backend's reads: exact ranges, and a read whose last piece is out ends without
// touching the file again, so the bus sends end-of-stream with the last batch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { StreamCursor } from '@flotilla/bus';
import { DiskBackend } from '../src/disk.js';

async function backendWith(data: Buffer): Promise<{ b: DiskBackend; dgst: string; root: string }> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-disk-read-'));
  const b = new DiskBackend(root);
  await b.init();
  const dgst = 'sha256:' + createHash('sha256').update(data).digest('hex');
  await fs.writeFile(b.blobPath(dgst), data);
  return { b, dgst, root };
}

async function collect(it: AsyncIterable<{ offset: number; data: Uint8Array }>): Promise<{ offset: number; data: Buffer }[]> {
  const out: { offset: number; data: Buffer }[] = [];
  for await (const c of it) out.push({ offset: c.offset, data: Buffer.from(c.data) });
  return out;
}

test('reads return exactly the asked range, in pieces of at most chunk bytes', async () => {
  const data = randomBytes(10_000);
  const { b, dgst, root } = await backendWith(data);
  try {
    const whole = await collect(b.read(dgst, 0, 0, 4096));
    assert.deepEqual(whole.map((c) => [c.offset, c.data.length]), [[0, 4096], [4096, 4096], [8192, 1808]]);
    assert.ok(Buffer.concat(whole.map((c) => c.data)).equals(data));
    const mid = await collect(b.read(dgst, 100, 5000, 4096));
    assert.deepEqual(mid.map((c) => [c.offset, c.data.length]), [[100, 4096], [4196, 904]]);
    assert.ok(Buffer.concat(mid.map((c) => c.data)).equals(data.subarray(100, 5100)));
    const exact = await collect(b.read(dgst, 0, 8192, 4096));
    assert.deepEqual(exact.map((c) => [c.offset, c.data.length]), [[0, 4096], [4096, 4096]]);
    assert.deepEqual(await collect(b.read(dgst, 10_000, 0, 4096)), []);
    // Small pieces: many read ahead at once, still in order and exact.
    const small = await collect(b.read(dgst, 7, 9_990, 97));
    assert.equal(small.length, Math.ceil(9_990 / 97));
    assert.ok(small.every((c, i) => c.offset === 7 + i * 97));
    assert.ok(Buffer.concat(small.map((c) => c.data)).equals(data.subarray(7, 9_997)));
    // A consumer that stops early leaves no open file behind (the finally closes it). The
    // files under the store's root are counted, not all of the process's (the test runner
    // opens and closes its own meanwhile).
    const openUnderRoot = async () => {
      const links = await Promise.all((await fs.readdir('/proc/self/fd')).map((fd) => fs.readlink(`/proc/self/fd/${fd}`).catch(() => '')));
      return links.filter((l) => l.startsWith(root)).length;
    };
    const reading = b.read(dgst, 0, 0, 100)[Symbol.asyncIterator]();
    await reading.next();
    assert.equal(await openUnderRoot(), 1, 'the blob is open while it is read');
    for (let r = await reading.next(); !r.done; r = await reading.next()) if (r.value.offset >= 300) break;
    await reading.return?.(undefined);
    assert.equal(await openUnderRoot(), 0);
    await assert.rejects(collect(b.read('sha256:' + '0'.repeat(64), 0, 0, 4096)), /not found/);
    // Within one chunk and SMALL_READ: read synchronously, still exact and closed after.
    const tiny = await collect(b.read(dgst, 100, 50, 4096));
    assert.deepEqual(tiny.map((c) => [c.offset, c.data.length]), [[100, 50]]);
    assert.ok(tiny[0]!.data.equals(data.subarray(100, 150)));
    assert.ok(Buffer.concat((await collect(b.read(dgst, 0, 10_000, 1 << 20))).map((c) => c.data)).equals(data));
    assert.equal(await openUnderRoot(), 0);
    await assert.rejects(collect(b.read('sha256:' + '0'.repeat(64), 0, 10, 4096)), /not found/);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});

test('a small read is one batch that carries end-of-stream', async () => {
  const data = randomBytes(3000);
  const { b, dgst, root } = await backendWith(data);
  try {
    const gen = async function* () {
      for await (const c of b.read(dgst, 0, 0, 1 << 20)) yield c.data;
    };
    const cursor = new StreamCursor(gen()[Symbol.asyncIterator](), 64 * 1024);
    const first = await cursor.next();
    assert.equal(first.end, true, 'the only batch must end the stream');
    assert.equal(first.batch.length, 5 + data.length);
    // Two pieces: the second (last) batch ends it, the first does not.
    const two = async function* () {
      for await (const c of b.read(dgst, 0, 0, 2000)) yield c.data;
    };
    const c2 = new StreamCursor(two()[Symbol.asyncIterator](), 2100);
    const a = await c2.next();
    const z = await c2.next();
    assert.deepEqual([a.end, a.batch.length, z.end, z.batch.length], [false, 2005, true, 1005]);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});
