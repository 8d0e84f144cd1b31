import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BatchReader, StreamCursor } from '@flotilla/bus';

async function* gen(msgs: Uint8Array[]) {
  for (const m of msgs) yield m;
}

test('messages larger than a batch are cut and reassembled', async () => {
  const msgs = [Buffer.alloc(10, 1), Buffer.alloc(1000, 2), Buffer.alloc(0), Buffer.alloc(333, 3), Buffer.alloc(64, 4)];
  const cursor = new StreamCursor(gen(msgs), 100);
  const reader = new BatchReader();
  const out: Uint8Array[] = [];
  let batches = 0;
  for (;;) {
    const { batch, end } = await cursor.next();
    assert.ok(batch.length <= 100, `batch of ${batch.length} bytes exceeds the limit`);
    batches++;
    out.push(...reader.read(batch));
    if (end) break;
  }
  assert.ok(batches > 10);
  assert.equal(out.length, msgs.length);
  for (let i = 0; i < msgs.length; i++) assert.deepEqual(Buffer.from(out[i]!), msgs[i]);
});

test('truncated batches are refused', () => {
  assert.throws(() => new BatchReader().read(Buffer.from([0, 0, 0, 9, 0, 1, 2])), /truncated/);
});

test('pages yielded at once are batched as their messages, in order, ending with the last', async () => {
  const m = (i: number, n: number) => Buffer.alloc(n, i);
  async function* pages() {
    yield [m(1, 10), m(2, 30), m(3, 0)];
    yield [];
    yield m(4, 250); // a single message between pages, longer than a batch
    yield Array.from({ length: 40 }, (_, i) => m(10 + i, 7)); // spans several batches
    yield [m(60, 5)];
  }
  const cursor = new StreamCursor(pages(), 100);
  const reader = new BatchReader();
  const out: Buffer[] = [];
  const ends: boolean[] = [];
  for (;;) {
    const { batch, end } = await cursor.next();
    assert.ok(batch.length <= 100);
    ends.push(end);
    out.push(...reader.read(batch).map((b) => Buffer.from(b)));
    if (end) break;
  }
  const want = [m(1, 10), m(2, 30), m(3, 0), m(4, 250), ...Array.from({ length: 40 }, (_, i) => m(10 + i, 7)), m(60, 5)];
  assert.deepEqual(out, want);
  assert.deepEqual(ends.slice(0, -1).filter(Boolean), [], 'only the last batch ends the stream');
  assert.ok(ends.length > 5);
});

test('a page that fills batches exactly still ends the stream with its last batch', async () => {
  // Records of 5 + 15 bytes: five fill a 100-byte batch; the generator ends after the page.
  async function* one() {
    yield Array.from({ length: 10 }, () => Buffer.alloc(15, 7));
  }
  const cursor = new StreamCursor(one(), 101);
  const a = await cursor.next();
  const b = await cursor.next();
  assert.deepEqual([a.batch.length, a.end, b.batch.length, b.end], [100, false, 100, true]);
});

test('a batch buffer given back once written takes a later batch; small ones never', async () => {
  const MiB = 1024 * 1024;
  // One message per batch: the producer yields the next only once the test has read the
  // batch before (a timer between yields raced the cursor's turn on a loaded machine).
  let release = () => {};
  async function* big() {
    for (let i = 0; i < 6; i++) {
      yield Buffer.alloc(MiB + 1000 * i, i + 1);
      await new Promise<void>((r) => (release = r));
    }
  }
  const cursor = new StreamCursor(big(), 8 * MiB);
  const reader = new BatchReader();
  const buffers: ArrayBufferLike[] = [];
  const out: Buffer[] = [];
  for (;;) {
    const { batch, end } = await cursor.next();
    buffers.push(batch.buffer);
    // Read (copied, as a transport would send it) before the buffer is given back.
    out.push(...reader.read(Buffer.from(batch)).map((b) => Buffer.from(b)));
    cursor.reuse(batch);
    release();
    if (end) break;
  }
  assert.deepEqual(out.map((b) => [b.length, b[0], b[b.length - 1]]), Array.from({ length: 6 }, (_, i) => [MiB + 1000 * i, i + 1, i + 1]));
  // All six batches in the one buffer (rounded up to 2 MiB), not six fresh ones.
  assert.equal(new Set(buffers).size, 1);
  assert.equal(buffers[0]!.byteLength, 2 * MiB);

  // Batches from node's shared pool (small) are left alone: other buffers live there.
  const small = new StreamCursor((async function* () { yield Buffer.alloc(10, 1); yield Buffer.alloc(10, 2); })(), 100, 0);
  const a = await small.next();
  const keep = Buffer.from(a.batch);
  small.reuse(a.batch);
  const b = await small.next();
  assert.ok(b.batch.buffer !== a.batch.buffer || b.batch.byteOffset !== a.batch.byteOffset);
  assert.deepEqual(Buffer.from(a.batch), keep);
});
