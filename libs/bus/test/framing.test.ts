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
