// computeDiff: the tar it writes, applied onto the lower, reproduces the upper; overlay
// lower layers diff the same as the tree the kernel merges from them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { applyLayer, computeDiff } from '@flotilla/archive';
import { chardev, dir, file, link, streamOf, symlink, tarOf, TAR } from './tarfix.js';

async function tmp(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-diff-'));
  t.after(() => fs.rm(d, { recursive: true, force: true }));
  return d;
}

/** A listing of a tree precise enough to compare: kind, mode, owner, link target, content hash. */
async function snapshot(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string) => {
    for (const name of (await fs.readdir(path.join(root, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const abs = path.join(root, r);
      const st = await fs.lstat(abs);
      let extra = '';
      if (st.isSymbolicLink()) extra = await fs.readlink(abs);
      else if (st.isFile()) extra = createHash('sha256').update(await fs.readFile(abs)).digest('hex').slice(0, 12);
      else if (st.isCharacterDevice()) extra = String(st.rdev);
      out.push(`${r} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${extra}`);
      if (st.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return out;
}

async function collect(fn: (out: PassThrough) => Promise<unknown>): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c) => chunks.push(c));
  await fn(out);
  return Buffer.concat(chunks);
}

test('the diff applied onto the lower gives the upper', async (t) => {
  const d = await tmp(t);
  const [lower, upper, check] = ['lower', 'upper', 'check'].map((n) => path.join(d, n)) as [string, string, string];
  await fs.mkdir(lower);
  await applyLayer(lower, streamOf(await tarOf(
    dir('etc'), file('etc/hostname', 'a'), file('etc/gone', 'x'), dir('var/lib/app'), file('var/lib/app/db', 'db'),
    symlink('hostname', 'etc/hn'), file('bin/tool', 'tool', 0o755), link('bin/tool', 'bin/tool2', 0o755), file('kind', 'file'),
  )), { mediaType: TAR, whiteouts: 'native' });
  execFileSync('cp', ['-a', lower, upper]);
  execFileSync('cp', ['-a', lower, check]);
  await fs.writeFile(path.join(upper, 'etc/hostname'), 'b');
  await fs.rm(path.join(upper, 'etc/gone'));
  await fs.rm(path.join(upper, 'var/lib'), { recursive: true });
  await fs.mkdir(path.join(upper, 'new/deep'), { recursive: true });
  await fs.writeFile(path.join(upper, 'new/deep/f'), 'f');
  await fs.link(path.join(upper, 'new/deep/f'), path.join(upper, 'new/f-link'));
  await fs.chmod(path.join(upper, 'bin/tool'), 0o700);
  await fs.rm(path.join(upper, 'kind'));
  await fs.mkdir(path.join(upper, 'kind'));
  await fs.writeFile(path.join(upper, 'kind/inside'), 'i');
  await fs.unlink(path.join(upper, 'etc/hn'));
  await fs.symlink('/elsewhere', path.join(upper, 'etc/hn'));

  let res!: Awaited<ReturnType<typeof computeDiff>>;
  const tarball = await collect(async (out) => (res = await computeDiff(lower, upper, out)));
  assert.equal(res.size, tarball.length);
  assert.equal(res.diffID, 'sha256:' + createHash('sha256').update(tarball).digest('hex'));
  assert.equal(res.digest, res.diffID);
  const names = execFileSync('tar', ['-t'], { input: tarball, encoding: 'utf8' }).trim().split('\n');
  assert.ok(names.includes('etc/.wh.gone') && names.includes('var/.wh.lib'), names.join(' '));
  assert.ok(!names.includes('var/lib/app/db'), 'removed trees are not descended into');
  // bin/tool changed mode, and so did its other name: the second is written as a link.
  assert.match(execFileSync('tar', ['-tv'], { input: tarball, encoding: 'utf8' }), /bin\/tool2 link to bin\/tool/);

  const applied = await applyLayer(check, streamOf(tarball), { mediaType: TAR, whiteouts: 'native' });
  assert.equal(applied.diffID, res.diffID);
  assert.deepEqual(await snapshot(check), await snapshot(upper));
  // The new hardlink pair stays one inode.
  const [a, b] = [await fs.lstat(path.join(check, 'new/deep/f')), await fs.lstat(path.join(check, 'new/f-link'))];
  assert.equal(a.ino, b.ino);

  // No change, no entries; gzip is reported on both sides.
  const empty = await collect((out) => computeDiff(upper, upper, out, { compression: 'gzip' }));
  assert.equal(execFileSync('tar', ['-t'], { input: gunzipSync(empty), encoding: 'utf8' }), '');
});

test('overlay lower layers diff like the merged tree', async (t) => {
  const d = await tmp(t);
  const [l1, l2, merged, upper] = ['l1', 'l2', 'merged', 'upper'].map((n) => path.join(d, n)) as [string, string, string, string];
  await fs.mkdir(l1);
  await fs.mkdir(l2);
  await fs.mkdir(merged);
  await applyLayer(l1, streamOf(await tarOf(dir('a'), file('a/x', 'x'), file('a/y', 'y'), dir('o'), file('o/old', 'old'), file('top', '1'))), { mediaType: TAR, whiteouts: 'overlay' });
  await applyLayer(l2, streamOf(await tarOf(file('a/.wh.x', ''), dir('o'), file('o/.wh..wh..opq', ''), file('o/new', 'new'), chardev('keep/dev', 1, 3))), { mediaType: TAR, whiteouts: 'overlay', parents: [l1] });
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${l2}:${l1}`, merged]);
  try {
    execFileSync('cp', ['-a', `${merged}/.`, upper]);
    await fs.writeFile(path.join(upper, 'a/y'), 'changed');
    await fs.writeFile(path.join(upper, 'o/newer'), 'n');
    const when = new Date('2024-01-01T00:00:00Z');
    const viaLayers = await collect((out) => computeDiff([l2, l1], upper, out, { whiteoutTime: when }));
    const viaMount = await collect((out) => computeDiff(merged, upper, out, { whiteoutTime: when }));
    assert.deepEqual(execFileSync('tar', ['-tv'], { input: viaLayers, encoding: 'utf8' }), execFileSync('tar', ['-tv'], { input: viaMount, encoding: 'utf8' }));
    assert.ok(viaLayers.equals(viaMount));
    const names = execFileSync('tar', ['-t'], { input: viaLayers, encoding: 'utf8' }).trim().split('\n');
    assert.deepEqual(names, ['a/', 'a/y', 'o/', 'o/newer']);
  } finally {
    execFileSync('umount', [merged]);
  }
});
