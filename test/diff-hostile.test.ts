// Hostile layers reaching the diff service end to end: images whose layers try to write,
// link, chmod or delete outside the snapshot (path traversal, absolute paths, symlink,
// hardlink and whiteout escapes) are imported with the real ctr into flotilla and into
// Debian's containerd. Whatever each does, a sentinel directory outside both roots stays
// exactly as it was; flotilla refuses what containerd refuses and contains what containerd
// contains, giving the same tree. A decompression bomb is refused by flotilla's bound
// (FLOTILLA_MAX_LAYER_BYTES), with nothing committed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { startReferenceContainerd, startStack, testNamespace, type CtrOptions, type CtrResult, type Reference, type Stack } from '@flotilla/testing';
import { describeTree, layerTar, ociArchive, type LayerEntry } from './snapshots-support.js';

const execFileP = promisify(execFile);
const MAX_LAYER_BYTES = 32 * 1024 * 1024;

let stack: Stack;
let ref: Reference;
let dir: string;
/** Outside every root: must never change. */
let outside: string;
let before0: unknown;

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-hostile-'));
  outside = path.join(dir, 'outside');
  await fs.mkdir(path.join(outside, 'sub'), { recursive: true });
  await fs.writeFile(path.join(outside, 'sentinel'), 'untouched\n', { mode: 0o644 });
  await fs.chmod(path.join(outside, 'sentinel'), 0o644);
  await fs.writeFile(path.join(outside, 'sub', 'file'), 'also untouched\n');
  before0 = await describeTree(outside);
  ref = await startReferenceContainerd();
  stack = await startStack({ env: { FLOTILLA_MAX_LAYER_BYTES: String(MAX_LAYER_BYTES) } });
});

after(async () => {
  await stack?.stop();
  await ref?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

/** Enough ".." to climb from any snapshot directory to "/". */
const UP = '../'.repeat(40);

interface Case {
  name: string;
  layers: () => LayerEntry[][];
}

const cases: Case[] = [
  {
    name: 'path traversal with ..',
    layers: () => [[{ name: `${UP}${outside.slice(1)}/sentinel`, content: 'pwned\n' }, { name: `a/${UP}${outside.slice(1)}/sub/file`, content: 'pwned\n' }]],
  },
  {
    name: 'absolute paths',
    layers: () => [[{ name: `${outside}/sentinel`, content: 'pwned\n' }, { name: `${outside}/new`, content: 'pwned\n' }]],
  },
  {
    name: 'symlink escape (absolute and relative) then write through it',
    layers: () => [
      [
        { name: 'abs', type: 'symlink', linkname: outside },
        { name: 'abs/sentinel', content: 'pwned\n' },
        { name: 'rel', type: 'symlink', linkname: `${UP}${outside.slice(1)}/sub` },
        { name: 'rel/file', content: 'pwned\n' },
        { name: 'rel/new', content: 'pwned\n' },
      ],
    ],
  },
  {
    name: 'symlink planted in one layer, written through in the next',
    layers: () => [
      [{ name: 'etc', type: 'symlink', linkname: outside }],
      [{ name: 'etc/', type: 'directory', mode: 0o777 }, { name: 'etc/sentinel', content: 'pwned\n' }, { name: 'etc/sub/new', content: 'pwned\n' }],
    ],
  },
  {
    name: 'hardlink to a file outside the root',
    layers: () => [[{ name: 'h', type: 'link', linkname: `${UP}${outside.slice(1)}/sentinel` }]],
  },
  {
    name: 'hardlink through an escaping symlink',
    layers: () => [[{ name: 'out', type: 'symlink', linkname: outside }, { name: 'h', type: 'link', linkname: 'out/sentinel' }]],
  },
  {
    name: 'chmod through a symlink',
    layers: () => [
      [
        { name: 'lnk', type: 'symlink', linkname: `${outside}/sentinel` },
        { name: 'h', type: 'link', linkname: 'lnk', mode: 0o777 },
      ],
      [{ name: 'lnk', type: 'symlink', linkname: `${outside}/sentinel`, mode: 0o777 }],
    ],
  },
  {
    name: 'whiteouts reaching outside',
    layers: () => [
      [{ name: 'keep', content: 'k\n' }, { name: 'w', type: 'symlink', linkname: outside }],
      [
        { name: `${UP}${outside.slice(1)}/.wh.sentinel`, content: '' },
        { name: 'w/.wh.sentinel', content: '' },
        { name: 'w/.wh..wh..opq', content: '' },
        { name: `a/${UP}${outside.slice(1)}/sub/.wh..wh..opq`, content: '' },
      ],
    ],
  },
];

interface Outcome {
  code: number;
  stderr: string;
  tree?: unknown;
}

function sides(): { name: string; ctr(args: string[], o?: CtrOptions): Promise<CtrResult> }[] {
  return [
    { name: 'flotilla', ctr: (a, o) => stack.ctr(a, o) },
    { name: 'containerd', ctr: (a, o) => ref.ctr(a, o) },
  ];
}

const normalize = (s: string) => s.replace(/sha256:[0-9a-f]{64}/g, '<digest>').replace(/\/tmp\/[^\s:"]+/g, '<path>').trim();

for (const [i, c] of cases.entries()) {
  test(`hostile layer through ctr images import: ${c.name}`, { timeout: 5 * 60_000 }, async (t) => {
    const ns = testNamespace(t.name);
    const layers = await Promise.all(c.layers().map((l) => layerTar(l)));
    const image = await ociArchive(dir, `flotilla.test/hostile-${i}:v1`, layers);
    const got: Record<string, Outcome> = {};
    for (const side of sides()) {
      const imp = await side.ctr(['images', 'import', image.archivePath], { namespace: ns, timeoutMs: 120_000 });
      const o: Outcome = { code: imp.code, stderr: normalize(imp.stderr) };
      if (imp.code === 0) {
        const target = await fs.mkdtemp(path.join(dir, 'mnt-'));
        // prepare, not view: ctr labels it gc.root, so neither garbage collector takes it meanwhile.
        const v = await side.ctr(['snapshots', 'prepare', 'probe', image.chainId], { namespace: ns });
        assert.equal(v.code, 0, `${side.name}: ${v.stderr}`);
        const m = await side.ctr(['snapshots', 'mounts', target, 'probe'], { namespace: ns });
        assert.match(m.stdout.trim(), /^mount -t /, `${side.name}: ${m.stderr}`);
        await execFileP('sh', ['-c', m.stdout.trim()]);
        try {
          o.tree = await describeTree(target);
        } finally {
          await execFileP('umount', [target]);
          await side.ctr(['snapshots', 'rm', 'probe'], { namespace: ns });
        }
      }
      got[side.name] = o;
      assert.deepEqual(await describeTree(outside), before0, `${side.name} changed the sentinel directory`);
    }
    const f = got.flotilla!;
    const r = got.containerd!;
    t.diagnostic(`containerd: ${r.code === 0 ? 'contained' : `refused: ${r.stderr}`}; flotilla: ${f.code === 0 ? 'contained' : `refused: ${f.stderr}`}`);
    assert.equal(f.code === 0, r.code === 0, `flotilla ${f.code ? 'refused' : 'accepted'} what containerd ${r.code ? 'refused' : 'accepted'}:\nflotilla: ${f.stderr}\ncontainerd: ${r.stderr}`);
    if (r.code === 0) {
      assert.deepEqual(f.tree, r.tree, 'contained differently');
    } else {
      // A clear error: ctr names the layer it failed to extract, and why.
      assert.match(f.stderr, /failed to extract layer|apply|invalid|refus|outside|escape/i, f.stderr);
    }
  });
}

test('a decompression bomb is refused past FLOTILLA_MAX_LAYER_BYTES, nothing committed', { timeout: 5 * 60_000 }, async (t) => {
  const ns = testNamespace(t.name);
  // 4x the bound of zeros: a few hundred KiB compressed.
  const tarBuf = await layerTar([{ name: 'zeros', content: Buffer.alloc(4 * MAX_LAYER_BYTES) }]);
  const gz = zlib.gzipSync(tarBuf, { level: 9 });
  assert.ok(gz.length < MAX_LAYER_BYTES / 64, `bomb is ${gz.length} bytes compressed`);
  const image = await ociArchive(dir, 'flotilla.test/bomb:v1', [tarBuf], { gzipLayers: [gz] });
  const imp = await stack.ctr(['images', 'import', image.archivePath], { namespace: ns, timeoutMs: 180_000 });
  assert.notEqual(imp.code, 0, 'bomb imported');
  assert.match(imp.stderr, /decompresses past the limit of 33554432 bytes/, imp.stderr);
  const ls = await stack.ctr(['snapshots', 'ls'], { namespace: ns });
  assert.equal(ls.code, 0, ls.stderr);
  assert.ok(!ls.stdout.includes(image.chainId), ls.stdout);
  assert.ok(!/Committed/.test(ls.stdout), ls.stdout);
  // The same layer inside the bound applies: the refusal is the bound, not the layer.
  const small = await layerTar([{ name: 'zeros', content: Buffer.alloc(MAX_LAYER_BYTES / 4) }]);
  const ok = await ociArchive(dir, 'flotilla.test/not-a-bomb:v1', [small]);
  const imp2 = await stack.ctr(['images', 'import', ok.archivePath], { namespace: ns, timeoutMs: 180_000 });
  assert.equal(imp2.code, 0, imp2.stderr);
  assert.match((await stack.ctr(['snapshots', 'ls'], { namespace: ns })).stdout, new RegExp(ok.chainId));
});
