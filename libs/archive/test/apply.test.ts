// applyLayer on real directories: entry kinds and their metadata, whiteouts in both
// modes, compression, accounting (size and diffID over the uncompressed tar) and limits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { applyLayer, isLayerMediaType } from '@flotilla/archive';
import { isInvalidArgument, isNotImplemented } from '@flotilla/errdefs';
import { chardev, dir, fifo, file, gzip, link, streamOf, symlink, tarOf, TAR, TGZ } from './tarfix.js';

async function tmp(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-apply-'));
  t.after(() => fs.rm(d, { recursive: true, force: true }));
  return d;
}

const sha = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const getfattr = (p: string) => execFileSync('getfattr', ['-h', '-d', '-m', '-', '--absolute-names', p], { encoding: 'utf8' });

test('applies every entry kind with owners, modes, xattrs and times', async (t) => {
  const root = await tmp(t);
  const mtime = new Date('2020-05-06T07:08:09Z');
  const layer = await tarOf(
    dir('etc', 0o750, { mtime }),
    file('etc/passwd', 'root:x:0:0', 0o640, { uid: 1234, gid: 5678, pax: { 'SCHILY.xattr.user.flotilla': 'yes', 'SCHILY.xattr.trusted.evil': 'no' } }),
    file('bin/setuid', '#!/bin/sh', 0o4755),
    symlink('../etc/passwd', 'bin/pw'),
    // A hardlink entry's owner and mode apply to the shared inode (as in containerd), so real
    // tars repeat the file's.
    link('etc/passwd', 'etc/passwd.hard', 0o640, { uid: 1234, gid: 5678 }),
    chardev('dev/null', 1, 3),
    fifo('run/fifo'),
  );
  const res = await applyLayer(root, streamOf(layer), { mediaType: TAR, whiteouts: 'native' });
  assert.equal(res.size, layer.length);
  assert.equal(res.diffID, sha(layer));

  const etc = await fs.lstat(path.join(root, 'etc'));
  assert.ok(etc.isDirectory());
  assert.equal(etc.mode & 0o7777, 0o750);
  assert.equal(etc.mtime.getTime(), mtime.getTime(), 'directory times are set after its children');
  const pw = await fs.lstat(path.join(root, 'etc/passwd'));
  assert.equal(await fs.readFile(path.join(root, 'etc/passwd'), 'utf8'), 'root:x:0:0');
  assert.equal(pw.mode & 0o7777, 0o640);
  assert.deepEqual([pw.uid, pw.gid], [1234, 5678]);
  assert.equal(pw.nlink, 2);
  assert.equal((await fs.lstat(path.join(root, 'etc/passwd.hard'))).ino, pw.ino);
  const xattrs = getfattr(path.join(root, 'etc/passwd'));
  assert.match(xattrs, /user\.flotilla="yes"/);
  assert.doesNotMatch(xattrs, /trusted\.evil/);
  assert.equal((await fs.lstat(path.join(root, 'bin/setuid'))).mode & 0o7777, 0o4755);
  assert.equal(await fs.readlink(path.join(root, 'bin/pw')), '../etc/passwd');
  assert.equal((await fs.lstat(path.join(root, 'bin/pw'))).mtime.getTime(), new Date('2023-01-02T03:04:05Z').getTime());
  const dev = await fs.lstat(path.join(root, 'dev/null'));
  assert.ok(dev.isCharacterDevice());
  assert.equal(dev.rdev, (1 << 8) | 3);
  assert.ok((await fs.lstat(path.join(root, 'run/fifo'))).isFIFO());
  // Implicit parents are 0755.
  assert.equal((await fs.lstat(path.join(root, 'run'))).mode & 0o7777, 0o755);
});

test('gzip layers are decompressed; size and diffID describe the uncompressed tar', async (t) => {
  const root = await tmp(t);
  const layer = await tarOf(file('hello', 'world'));
  const res = await applyLayer(root, streamOf(gzip(layer)), { mediaType: TGZ, whiteouts: 'native' });
  assert.deepEqual(res, { size: layer.length, diffID: sha(layer) });
  assert.equal(await fs.readFile(path.join(root, 'hello'), 'utf8'), 'world');
  // Docker's media type, and a gzip type holding an uncompressed tar, both apply.
  await applyLayer(root, streamOf(gzip(layer)), { mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', whiteouts: 'native' });
  await applyLayer(root, streamOf(layer), { mediaType: TGZ, whiteouts: 'native' });
});

test('a tar written by GNU tar (with its record padding) is counted whole', async (t) => {
  const src = await tmp(t);
  const root = await tmp(t);
  await fs.mkdir(path.join(src, 'd'));
  await fs.writeFile(path.join(src, 'd/f'), 'x'.repeat(3000));
  const layer = execFileSync('tar', ['-C', src, '--numeric-owner', '-cf', '-', 'd']);
  assert.equal(layer.length % 10240, 0);
  const res = await applyLayer(root, streamOf(gzip(layer)), { mediaType: TGZ, whiteouts: 'native' });
  assert.deepEqual(res, { size: layer.length, diffID: sha(layer) });
  assert.equal((await fs.readFile(path.join(root, 'd/f'), 'utf8')).length, 3000);
});

test('native whiteouts delete; opaque directories keep only what the layer adds', async (t) => {
  const root = await tmp(t);
  await fs.mkdir(path.join(root, 'a/b'), { recursive: true });
  await fs.writeFile(path.join(root, 'a/b/old'), 'old');
  await fs.writeFile(path.join(root, 'a/keep'), 'keep');
  await fs.writeFile(path.join(root, 'gone'), 'gone');
  await fs.mkdir(path.join(root, 'opq/sub'), { recursive: true });
  await fs.writeFile(path.join(root, 'opq/sub/old'), 'old');
  const layer = await tarOf(file('.wh.gone', ''), file('a/.wh.b', ''), dir('opq'), file('opq/.wh..wh..opq', ''), file('opq/new', 'new'));
  await applyLayer(root, streamOf(layer), { mediaType: TAR, whiteouts: 'native' });
  assert.deepEqual((await fs.readdir(root)).sort(), ['a', 'opq']);
  assert.deepEqual(await fs.readdir(path.join(root, 'a')), ['keep']);
  assert.deepEqual(await fs.readdir(path.join(root, 'opq')), ['new']);
});

test('overlay whiteouts become 0/0 devices and opaque xattrs', async (t) => {
  const root = await tmp(t);
  const layer = await tarOf(dir('etc'), file('etc/.wh.shadow', '', 0o644, { uid: 7, gid: 8 }), dir('var'), file('var/.wh..wh..opq', ''), file('var/new', 'n'));
  await applyLayer(root, streamOf(layer), { mediaType: TAR, whiteouts: 'overlay' });
  const wh = await fs.lstat(path.join(root, 'etc/shadow'));
  assert.ok(wh.isCharacterDevice());
  assert.equal(wh.rdev, 0);
  assert.deepEqual([wh.uid, wh.gid], [7, 8]);
  assert.match(getfattr(path.join(root, 'var')), /trusted\.overlay\.opaque="y"/);
  assert.deepEqual(await fs.readdir(path.join(root, 'var')), ['new']);
  await assert.rejects(fs.lstat(path.join(root, 'etc/.wh.shadow')), { code: 'ENOENT' });
});

test('implicit parents copy owner and mode from the lower directories', async (t) => {
  const lower = await tmp(t);
  const upper = await tmp(t);
  await fs.mkdir(path.join(lower, 'srv/data'), { recursive: true });
  await fs.chmod(path.join(lower, 'srv/data'), 0o700);
  await fs.chown(path.join(lower, 'srv/data'), 33, 33);
  await applyLayer(upper, streamOf(await tarOf(file('srv/data/x', 'x'))), { mediaType: TAR, whiteouts: 'overlay', parents: [lower] });
  const st = await fs.lstat(path.join(upper, 'srv/data'));
  assert.equal(st.mode & 0o7777, 0o700);
  assert.deepEqual([st.uid, st.gid], [33, 33]);
});

test('replaces existing entries, but merges into existing directories', async (t) => {
  const root = await tmp(t);
  await fs.mkdir(path.join(root, 'd'));
  await fs.writeFile(path.join(root, 'd/keep'), 'k');
  await fs.mkdir(path.join(root, 'was-dir'));
  await fs.writeFile(path.join(root, 'was-dir/x'), 'x');
  await fs.symlink('/etc', path.join(root, 'was-link'));
  await applyLayer(root, streamOf(await tarOf(dir('d', 0o700), file('d/new', 'n'), file('was-dir', 'now a file'), file('was-link', 'now a file'))), { mediaType: TAR, whiteouts: 'native' });
  assert.deepEqual((await fs.readdir(path.join(root, 'd'))).sort(), ['keep', 'new']);
  assert.equal((await fs.lstat(path.join(root, 'd'))).mode & 0o7777, 0o700);
  assert.equal(await fs.readFile(path.join(root, 'was-dir'), 'utf8'), 'now a file');
  assert.ok((await fs.lstat(path.join(root, 'was-link'))).isFile());
});

test('decompression is bounded', async (t) => {
  const root = await tmp(t);
  const layer = await tarOf(file('big', Buffer.alloc(1 << 20)));
  await assert.rejects(applyLayer(root, streamOf(gzip(layer)), { mediaType: TGZ, whiteouts: 'native', maxUncompressedBytes: 64 * 1024 }), (err) => isInvalidArgument(err) && /64 ?KiB|65536/.test((err as Error).message));
  const ok = await applyLayer(root, streamOf(gzip(layer)), { mediaType: TGZ, whiteouts: 'native', maxUncompressedBytes: layer.length });
  assert.equal(ok.size, layer.length);
});

test('media types: unknown ones are NotImplemented; corrupt data fails', async (t) => {
  const root = await tmp(t);
  assert.ok(isLayerMediaType(TGZ));
  assert.ok(!isLayerMediaType('application/json'));
  const layer = await tarOf(file('a', 'a'));
  await assert.rejects(applyLayer(root, streamOf(layer), { mediaType: 'application/json', whiteouts: 'native' }), (err) => isNotImplemented(err));
  const bad = gzip(layer).subarray(0, 30);
  await assert.rejects(applyLayer(root, streamOf(bad), { mediaType: TGZ, whiteouts: 'native' }));
});

test('zstd layers apply (by the zstd tool); corrupt and truncated ones fail; the bound holds', async (t) => {
  const root = await tmp(t);
  const ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd';
  const layer = await tarOf(file('z', 'zstd content\n'), dir('d'), file('d/big', Buffer.alloc(300_000, 1)));
  const zst = execFileSync('zstd', ['-q', '-c'], { input: layer });
  const res = await applyLayer(root, streamOf(zst), { mediaType: ZSTD, whiteouts: 'native' });
  assert.equal(res.size, layer.length);
  assert.equal(res.diffID, 'sha256:' + createHash('sha256').update(layer).digest('hex'));
  assert.equal(await fs.readFile(path.join(root, 'z'), 'utf8'), 'zstd content\n');
  assert.equal((await fs.stat(path.join(root, 'd/big'))).size, 300_000);
  // A Docker media type is sniffed too.
  const root2 = await tmp(t);
  await applyLayer(root2, streamOf(zst), { mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', whiteouts: 'native' });
  assert.equal(await fs.readFile(path.join(root2, 'z'), 'utf8'), 'zstd content\n');
  const magicOnly = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]);
  await assert.rejects(applyLayer(await tmp(t), streamOf(magicOnly), { mediaType: ZSTD, whiteouts: 'native' }), (err) => isInvalidArgument(err) && /zstd/.test((err as Error).message));
  await assert.rejects(applyLayer(await tmp(t), streamOf(zst.subarray(0, zst.length - 20)), { mediaType: ZSTD, whiteouts: 'native' }), (err) => /zstd/.test((err as Error).message));
  await assert.rejects(applyLayer(await tmp(t), streamOf(zst), { mediaType: ZSTD, whiteouts: 'native', maxUncompressedBytes: 64 * 1024 }), (err) => isInvalidArgument(err) && /limit/.test((err as Error).message));
});
