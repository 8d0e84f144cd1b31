// Layer media types through the diff service's Apply, end to end: an image whose three
// layers are an uncompressed tar, a tar+gzip and a tar+zstd is imported with the real
// ctr into flotilla and into Debian's containerd; the unpacked trees must be the same.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { connect } from 'nats';
import { content as capi, flotillaContent } from '@flotilla/api';
import { startReferenceContainerd, startStack, testNamespace, type Reference, type Stack } from '@flotilla/testing';
import { describeTree, layerTar, ociArchive } from './snapshots-support.js';

const execFileP = promisify(execFile);

let stack: Stack;
let ref: Reference;
let dir: string;

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-apply-'));
  ref = await startReferenceContainerd();
  // Direct links off: the second test watches content Reads cross nats-server (links would
  // carry them unseen after the first; test/ingest-direct.test.ts covers links through ctr).
  stack = await startStack({ env: { FLOTILLA_DIRECT: 'off' } });
});

after(async () => {
  await stack?.stop();
  await ref?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

test('tar, tar+gzip and tar+zstd layers unpack to the tree Debian containerd unpacks', { timeout: 5 * 60_000 }, async (t) => {
  const ns = testNamespace(t.name);
  const layers = [
    await layerTar([{ name: 'plain/', type: 'directory' }, { name: 'plain/a', content: 'from the tar layer\n' }, { name: 'shared', content: 'v1\n' }]),
    await layerTar([{ name: 'gz/', type: 'directory', mode: 0o700 }, { name: 'gz/b', content: Buffer.alloc(200_000, 2) }, { name: 'shared', content: 'v2\n', mode: 0o600 }]),
    await layerTar([{ name: 'zst/', type: 'directory' }, { name: 'zst/c', content: Buffer.alloc(300_000, 3), uid: 12, gid: 34 }, { name: '.wh.plain', content: '' }]),
  ];
  const image = await ociArchive(dir, 'flotilla.test/media-types:v1', layers, { perLayer: ['none', 'gzip', 'zstd'] });
  const trees: unknown[] = [];
  for (const side of [{ name: 'flotilla', ctr: stack.ctr }, { name: 'containerd', ctr: ref.ctr }]) {
    const imp = await side.ctr(['images', 'import', image.archivePath], { namespace: ns, timeoutMs: 120_000 });
    assert.equal(imp.code, 0, `${side.name}: ${imp.stderr}`);
    const p = await side.ctr(['snapshots', 'prepare', 'probe', image.chainId], { namespace: ns });
    assert.equal(p.code, 0, `${side.name}: ${p.stderr}`);
    const target = await fs.mkdtemp(path.join(dir, 'mnt-'));
    const m = await side.ctr(['snapshots', 'mounts', target, 'probe'], { namespace: ns });
    assert.match(m.stdout.trim(), /^mount -t /, `${side.name}: ${m.stderr}`);
    await execFileP('sh', ['-c', m.stdout.trim()]);
    try {
      trees.push(await describeTree(target));
    } finally {
      await execFileP('umount', [target]);
    }
  }
  assert.deepEqual(trees[0], trees[1]);
  const tree = trees[1] as Record<string, { sha256?: string; uid?: number }>;
  assert.equal(tree.plain, undefined);
  assert.equal(tree['zst/c']?.uid, 12);
  assert.ok(tree['gz/b'] && tree.shared);
});

test('with the local content backend, Apply reads layer blobs from the content store\'s files, not over the bus', { timeout: 5 * 60_000 }, async (t) => {
  const ns = testNamespace(t.name);
  const layers = [
    await layerTar([{ name: 'one/', type: 'directory' }, { name: 'one/a', content: Buffer.alloc(100_000, 1) }]),
    await layerTar([{ name: 'two/', type: 'directory' }, { name: 'two/b', content: Buffer.alloc(100_000, 2) }]),
  ];
  const image = await ociArchive(dir, 'flotilla.test/local-read:v1', layers);
  const nc = await connect({ servers: stack.env.NATS_URL! });
  const read: string[] = [];
  const infos: string[] = [];
  // The gateway asks for Info as InfoData, and answers a small blob's Read that follows from it.
  const subs = [
    nc.subscribe('flotilla.v1.svc.content.Read', { callback: (_e, m) => read.push(capi.ReadContentRequest.decode(m.data).digest) }),
    nc.subscribe('flotilla.v1.svc.content.InfoData', { callback: (_e, m) => infos.push(capi.InfoRequest.decode(flotillaContent.InfoDataRequest.decode(m.data).request).digest) }),
  ];
  await nc.flush();
  try {
    const imp = await stack.ctr(['images', 'import', image.archivePath], { namespace: ns, timeoutMs: 120_000 });
    assert.equal(imp.code, 0, imp.stderr);
    await nc.flush();
  } finally {
    for (const s of subs) s.unsubscribe();
    await nc.close();
  }
  assert.ok(infos.length > 0, 'ctr reads the manifest and config through the content service');
  for (const d of image.layerDigests) assert.ok(!read.includes(d), `layer ${d} read over the bus`);
  // The unpack happened: the chain's committed snapshot exists with the layers' files.
  const p = await stack.ctr(['snapshots', 'prepare', 'probe', image.chainId], { namespace: ns });
  assert.equal(p.code, 0, p.stderr);
  const target = await fs.mkdtemp(path.join(dir, 'mnt-'));
  const m = await stack.ctr(['snapshots', 'mounts', target, 'probe'], { namespace: ns });
  await execFileP('sh', ['-c', m.stdout.trim()]);
  try {
    assert.deepEqual(await fs.readFile(path.join(target, 'two/b')), Buffer.alloc(100_000, 2));
    assert.deepEqual(await fs.readFile(path.join(target, 'one/a')), Buffer.alloc(100_000, 1));
  } finally {
    await execFileP('umount', [target]);
  }
});
