// The disk backend's ingests keep the updatedAt of their last write across a close: a
// pipelined write's time is when the gateway accepted it, before its bytes reach the file,
// and both a Status of the closed ingest and a resumed writer must report that time
// (containerd's content testsuite, Resume), not the data file's later mtime. Writes the
// gateway vouched for (its digest of the stream) are not hashed twice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { DiskBackend } from '../src/disk.js';

/** `fn` on a DiskBackend in a fresh directory, removed after; with `tmpfsSize`, on a tmpfs of that size. */
async function withBackend(prefix: string, fn: (b: DiskBackend, root: string) => Promise<void>, tmpfsSize?: string): Promise<void> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), `flotilla-disk-${prefix}-`));
  if (tmpfsSize) execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${tmpfsSize}`, 'tmpfs', root]);
  try {
    const b = new DiskBackend(root);
    await b.init();
    await fn(b, root);
  } finally {
    if (tmpfsSize) execFileSync('umount', [root]);
    await fs.rm(root, { recursive: true, force: true });
  }
}

test('a closed ingest reports its last write\'s time, not when the bytes hit the disk', async () => {
  await withBackend('ingest', async (b) => {
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
  });
});

const sha = (...parts: Buffer[]) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return `sha256:${h.digest('hex')}`;
};

test('vouched writes are not hashed again; what was not vouched for is hashed from the file', async () => {
  await withBackend('vouched', async (b) => {
    const a = randomBytes(3 << 20);
    const c = randomBytes(1000);
    // A digest no hash of the bytes gives: if it comes back, the writer took it unhashed.
    const marker = `sha256:${'ab'.repeat(32)}`;
    const w = await b.writer('k2', 'ref-2', 0);
    await w.write(a, undefined, { digest: marker, offset: a.length });
    await w.settle!();
    assert.equal(w.digest(), marker, 'vouched for at this offset');
    // A write nobody vouched for: the hash first takes a back from the file.
    await w.write(c);
    assert.equal(w.digest(), sha(a, c));
    // Vouched for another offset: ignored, hashed as usual.
    await w.write(c, undefined, { digest: marker, offset: 1 });
    assert.equal(w.digest(), sha(a, c, c));
    // Where the writer hashed everything itself, its own hash wins over a vouch.
    w.vouch!({ digest: marker, offset: w.offset });
    assert.equal(w.digest(), sha(a, c, c));
    // Truncation forgets both.
    await w.truncate(0);
    assert.equal(w.digest(), sha());
    await w.write(a, undefined, { digest: sha(a), offset: a.length });
    await w.write(c, undefined, { digest: sha(a, c), offset: a.length + c.length });
    // settle() with no vouch for the offset hashes the file.
    w.vouch!({ digest: marker, offset: 5 });
    const committed = await w.commit(0, sha(a, c));
    assert.deepEqual(committed, { digest: sha(a, c), size: a.length + c.length });
    assert.ok((await fs.readFile(b.blobPath(sha(a, c)))).equals(Buffer.concat([a, c])));

    // Vouched writes, then a digest asked for at an offset nobody vouched for.
    const w2 = await b.writer('k3', 'ref-3', 0);
    await w2.write(a, undefined, { digest: marker, offset: a.length });
    await w2.write(c, undefined, { digest: marker, offset: a.length + c.length });
    await w2.truncate(0);
    await w2.write(c, undefined, { digest: marker, offset: c.length });
    await w2.write(a);
    assert.equal(w2.digest(), sha(c, a), 'hash caught up from the file, then took the write');
    await w2.close();
  });
});

test('vouched writes left running land in order, and settle() waits for every byte', async () => {
  await withBackend('behind', async (b, root) => {
    const parts = Array.from({ length: 48 }, (_, i) => randomBytes(i % 2 ? 1 << 20 : 65_536 + i));
    const h = createHash('sha256');
    const w = await b.writer('k4', 'ref-4', 0);
    let offset = 0;
    for (const p of parts) {
      h.update(p);
      offset += p.length;
      await w.write(p, undefined, { digest: `sha256:${h.copy().digest('hex')}`, offset });
      assert.equal(w.status().offset, offset, 'the offset counts the write left running');
    }
    await w.settle!();
    assert.equal((await fs.stat(path.join(root, 'ingest', 'k4', 'data'))).size, offset, 'every byte is in the file after settle()');
    const { digest } = await w.commit(0, sha(...parts));
    // The digest committed was the vouched one: the file itself must hash to it.
    assert.equal(sha(await fs.readFile(b.blobPath(digest))), sha(...parts));
  });
});

test('a vouched write that fails while left running fails the next call and cuts the file back', async () => {
  // A real ENOSPC: the backend on a 3 MiB tmpfs.
  await withBackend('enospc', async (b, root) => {
    const w = await b.writer('k5', 'ref-5', 0);
    const mib = randomBytes(1 << 20);
    const marker = `sha256:${'cd'.repeat(32)}`;
    let err: unknown;
    try {
      for (let i = 1; i <= 6; i++) await w.write(mib, undefined, { digest: marker, offset: i << 20 });
      await w.settle!();
    } catch (e) {
      err = e;
    }
    assert.equal((err as NodeJS.ErrnoException | undefined)?.code, 'ENOSPC', `writes past the space fail: ${err}`);
    const size = (await fs.stat(path.join(root, 'ingest', 'k5', 'data'))).size;
    assert.equal(size % (1 << 20), 0, `the file is cut back to where the failed write began (size ${size})`);
    assert.equal(w.status().offset, size, 'and the offset with it');
    assert.ok(size < 3 << 20);
    // The failure sticks: the ingest must be resumed from its status, not written on.
    await assert.rejects(w.write(mib, undefined, { digest: marker, offset: size + (1 << 20) }), { code: 'ENOSPC' });
    await assert.rejects(w.commit(0, ''), { code: 'ENOSPC' });
    await w.close();
    assert.equal((await b.ingestStatus('k5')).offset, size, 'a resumed writer starts at the cut');
  }, '3m');
});
