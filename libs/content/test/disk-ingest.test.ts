// The disk backend's ingests keep the updatedAt of their last write across a close: a
// pipelined write's time is when the gateway accepted it, before its bytes reach the file,
// and both a Status of the closed ingest and a resumed writer must report that time
// (containerd's content testsuite, Resume), not the data file's later mtime.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DiskBackend } from '../src/disk.js';

test('a closed ingest reports its last write\'s time, not when the bytes hit the disk', async () => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-disk-ingest-'));
  try {
    const b = new DiskBackend(root);
    await b.init();
    const w = await b.writer('k1', 'ref-1', 256);
    const accepted = Date.now() - 50.25; // the write was accepted 50 ms before it is done here
    await w.write(Buffer.alloc(128, 1), accepted);
    assert.equal(w.status().updatedAt, accepted);
    await w.close();
    assert.ok(Math.abs((await b.ingestStatus('k1')).updatedAt - accepted) < 0.01, 'Status after close');
    const again = await b.writer('k1', 'ref-1', 256);
    try {
      assert.equal(again.status().offset, 128);
      assert.ok(Math.abs(again.status().updatedAt - accepted) < 0.01, 'resumed writer');
    } finally {
      await again.close();
    }
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});
