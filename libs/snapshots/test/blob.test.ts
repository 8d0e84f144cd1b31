// layerSource (where the diff service's Apply reads a layer): the content store's own blob
// file when this host has it with the recorded size, the content service's Read otherwise;
// the namespace check (Info) always comes first, and nothing happens before the first read.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { DiskBackend } from '@flotilla/content';
import { errNotFound, isNotFound } from '@flotilla/errdefs';
import { layerSource, type LayerContent } from '@flotilla/snapshots';

let dir: string;
let store: DiskBackend;

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-layersource-'));
  store = new DiskBackend(dir);
  await store.init();
});

after(async () => {
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

/** A blob in the local store's layout, as the content service commits it. */
async function committed(data: Buffer): Promise<string> {
  const d = sha256(data);
  await fs.writeFile(store.blobPath(d), data, { mode: 0o444 });
  return d;
}

/** A content service holding `blobs` (digest -> bytes), recording the calls it gets. */
function fakeContent(blobs: Map<string, Buffer>) {
  const calls: string[] = [];
  const content = {
    async info(req: { digest: string }) {
      calls.push('info');
      const b = blobs.get(req.digest);
      if (!b) throw errNotFound(`content digest ${req.digest}`);
      return { info: { digest: req.digest, size: b.length, labels: {} } };
    },
    async *read(req: { digest: string }) {
      calls.push('read');
      const b = blobs.get(req.digest);
      if (!b) throw errNotFound(`content digest ${req.digest}`);
      for (let off = 0; off < b.length; off += 1000) yield { offset: off, data: b.subarray(off, off + 1000) };
    },
  } as unknown as LayerContent;
  return { content, calls };
}

async function drain(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}

const ctx = { namespace: 'ns' };
const local = (d: string) => store.blobPath(d);

describe('layerSource', () => {
  test('reads the local blob file, in chunks, after an Info and without a content Read', async () => {
    const data = randomBytes(70_000);
    const d = await committed(data);
    const { content, calls } = fakeContent(new Map([[d, data]]));
    const s = layerSource(content, d, ctx, { localBlobPath: local, chunk: 16_384 });
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(calls, [], 'nothing is asked before the stream is read');
    const chunks: Buffer[] = [];
    for await (const c of s) chunks.push(c);
    assert.ok(Buffer.concat(chunks).equals(data));
    assert.deepEqual(chunks.map((c) => c.length), [16_384, 16_384, 16_384, 16_384, 4_464]);
    assert.deepEqual(calls, ['info']);
  });

  test('reads over the bus when this host has no such file', async () => {
    const data = randomBytes(5000);
    const d = sha256(data); // not in the local store
    const { content, calls } = fakeContent(new Map([[d, data]]));
    assert.ok((await drain(layerSource(content, d, ctx, { localBlobPath: local }))).equals(data));
    assert.deepEqual(calls, ['info', 'read']);
  });

  test('reads over the bus when the local file is not the recorded size', async () => {
    const data = randomBytes(5000);
    const d = sha256(data);
    await fs.writeFile(store.blobPath(d), data.subarray(0, 4000));
    const { content, calls } = fakeContent(new Map([[d, data]]));
    assert.ok((await drain(layerSource(content, d, ctx, { localBlobPath: local }))).equals(data));
    assert.deepEqual(calls, ['info', 'read']);
  });

  test('a blob the namespace does not have is NotFound, even when the file exists', async () => {
    const data = randomBytes(3000);
    const d = await committed(data);
    const { content, calls } = fakeContent(new Map());
    await assert.rejects(drain(layerSource(content, d, ctx, { localBlobPath: local })), (err) => isNotFound(err) && (err as Error).message.includes(`content digest ${d}`));
    assert.deepEqual(calls, ['info']);
  });

  test('without a local store, or for a digest it cannot hold, reads over the bus only', async () => {
    const data = randomBytes(3000);
    const d = await committed(data);
    const one = fakeContent(new Map([[d, data]]));
    assert.ok((await drain(layerSource(one.content, d, ctx))).equals(data));
    assert.deepEqual(one.calls, ['read']);
    const other = 'sha512:' + createHash('sha512').update(data).digest('hex');
    const two = fakeContent(new Map([[other, data]]));
    assert.ok((await drain(layerSource(two.content, other, ctx, { localBlobPath: local }))).equals(data));
    assert.deepEqual(two.calls, ['read']);
  });

  test('an empty blob is an empty stream', async () => {
    const data = Buffer.alloc(0);
    const d = await committed(data);
    const { content, calls } = fakeContent(new Map([[d, data]]));
    assert.equal((await drain(layerSource(content, d, ctx, { localBlobPath: local }))).length, 0);
    assert.deepEqual(calls, ['info']);
  });
});
