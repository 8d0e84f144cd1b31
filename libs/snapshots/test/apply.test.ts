// applyDiff (the diff service's Apply) onto snapshot chains of both snapshotters: gzip
// layers with whiteouts and opaque directories, checked through the mounted merged view;
// a failed apply leaves no mount behind.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { migrate } from '@flotilla/db';
import { isInvalidArgument } from '@flotilla/errdefs';
import { Snapshotter, applyDiff, compareMounts, snapshotMigrations, withTempMount } from '@flotilla/snapshots';
import { startPg, type TestPg } from './pg.js';

const TGZ = 'application/vnd.oci.image.layer.v1.tar+gzip';

type E = { name: string; type?: 'file' | 'directory' | 'symlink'; body?: string; linkname?: string; mode?: number };

async function layer(...entries: E[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  })();
  for (const e of entries) {
    const type = e.type ?? 'file';
    const header = { name: e.name, type, mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644), linkname: e.linkname, mtime: new Date(0) };
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (type === 'file') pack.entry(header, e.body ?? '', cb);
      else pack.entry(header, cb);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

const sha = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const mountTable = () => readFileSync('/proc/self/mountinfo', 'utf8');

let pg: TestPg;
let dataDir: string;

before(async () => {
  pg = await startPg();
  await migrate(pg.sql, 'snapshots', snapshotMigrations);
  dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-applydiff-'));
});

after(async () => {
  await pg?.stop();
  if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
});

for (const name of ['overlayfs', 'native'] as const) {
  describe(`applyDiff on ${name}`, () => {
    test('a chain of gzip layers with whiteouts merges as the image would', async () => {
      const s = new Snapshotter({ sql: pg.sql, nodeId: 'node-apply', name, root: path.join(dataDir, name) });
      const ns = 'apply';
      const l1 = await layer(
        { name: 'etc', type: 'directory' },
        { name: 'etc/hostname', body: 'one' },
        { name: 'etc/removed', body: 'bye' },
        { name: 'var', type: 'directory', mode: 0o700 },
        { name: 'var/cache', type: 'directory' },
        { name: 'var/cache/old', body: 'old' },
        { name: 'var/keep', body: 'keep?' },
        { name: 'bin', type: 'directory' },
        { name: 'bin/sh', body: '#!', mode: 0o755 },
        { name: 'bin/ash', type: 'symlink', linkname: 'sh' },
      );
      const r1 = await applyDiff(await s.prepare(ns, 'l1-extract'), Readable.from([gzipSync(l1)]), TGZ);
      assert.deepEqual(r1, { size: l1.length, diffID: sha(l1) });
      await s.commit(ns, 'l1', 'l1-extract');

      // Layer 2: a file whited out, a directory made opaque, a file changed, and a new file
      // in an existing directory (whose implicit parent must keep the lower's mode).
      const l2 = await layer(
        { name: 'etc/.wh.removed' },
        { name: 'etc/hostname', body: 'two' },
        { name: 'var/.wh..wh..opq' },
        { name: 'var/fresh', body: 'fresh' },
        { name: 'bin/busybox/applet', body: 'x' }, // replaces nothing: bin/busybox is new
      );
      const r2 = await applyDiff(await s.prepare(ns, 'l2-extract', 'l1'), Readable.from([gzipSync(l2)]), TGZ);
      assert.deepEqual(r2, { size: l2.length, diffID: sha(l2) });
      await s.commit(ns, 'l2', 'l2-extract');

      // Layer 3 on top, to make the view a real three-lower overlay.
      const l3 = await layer({ name: 'bin/.wh.ash' }, { name: 'top', body: '3' });
      await applyDiff(await s.prepare(ns, 'l3-extract', 'l2'), Readable.from([gzipSync(l3)]), TGZ);
      await s.commit(ns, 'l3', 'l3-extract');

      await withTempMount(await s.view(ns, 'merged', 'l3'), async (root) => {
        assert.deepEqual((await fs.readdir(root)).sort(), ['bin', 'etc', 'top', 'var']);
        assert.deepEqual(await fs.readdir(path.join(root, 'etc')), ['hostname']);
        assert.equal(await fs.readFile(path.join(root, 'etc/hostname'), 'utf8'), 'two');
        assert.deepEqual(await fs.readdir(path.join(root, 'var')), ['fresh']);
        assert.equal((await fs.stat(path.join(root, 'var'))).mode & 0o777, 0o700);
        assert.deepEqual((await fs.readdir(path.join(root, 'bin'))).sort(), ['busybox', 'sh']);
        assert.equal((await fs.stat(path.join(root, 'bin/sh'))).mode & 0o777, 0o755);
      });
      // A view of l1 still has all of layer 1.
      await withTempMount(await s.view(ns, 'first', 'l1'), async (root) => {
        assert.deepEqual((await fs.readdir(path.join(root, 'etc'))).sort(), ['hostname', 'removed']);
        assert.deepEqual((await fs.readdir(path.join(root, 'var'))).sort(), ['cache', 'keep']);
        assert.equal(await fs.readlink(path.join(root, 'bin/ash')), 'sh');
      });
    });

    test('compareMounts writes the layer that replays a container\'s changes', async () => {
      const s = new Snapshotter({ sql: pg.sql, nodeId: 'node-compare', name, root: path.join(dataDir, `compare-${name}`) });
      const ns = 'compare';
      await applyDiff(await s.prepare(ns, 'base-w'), Readable.from([await layer({ name: 'etc', type: 'directory' }, { name: 'etc/a', body: 'a' }, { name: 'etc/b', body: 'b' })]), 'application/vnd.oci.image.layer.v1.tar');
      await s.commit(ns, 'base', 'base-w');
      const work = await s.prepare(ns, 'work', 'base');
      await withTempMount(work, async (root) => {
        await fs.writeFile(path.join(root, 'etc/a'), 'changed');
        await fs.rm(path.join(root, 'etc/b'));
        await fs.mkdir(path.join(root, 'data'));
        await fs.writeFile(path.join(root, 'data/new'), 'new');
      });
      const out = new PassThrough();
      const chunks: Buffer[] = [];
      out.on('data', (c) => chunks.push(c));
      const diff = await compareMounts(await s.view(ns, 'base-view', 'base'), await s.mounts(ns, 'work'), out, { compression: 'gzip' });
      const blob = Buffer.concat(chunks);
      assert.equal(diff.compressedSize, blob.length);
      const replayed = await applyDiff(await s.prepare(ns, 'replay', 'base'), Readable.from([blob]), TGZ);
      assert.equal(replayed.diffID, diff.diffID);
      await withTempMount(await s.mounts(ns, 'replay'), async (root) => {
        assert.deepEqual((await fs.readdir(root)).sort(), ['data', 'etc']);
        assert.deepEqual(await fs.readdir(path.join(root, 'etc')), ['a']);
        assert.equal(await fs.readFile(path.join(root, 'etc/a'), 'utf8'), 'changed');
        assert.equal(await fs.readFile(path.join(root, 'data/new'), 'utf8'), 'new');
      });
    });

    test('a writable rbind is applied onto its source without mount(8); a read-only one still through it', async () => {
      const s = new Snapshotter({ sql: pg.sql, nodeId: 'node-apply-direct', name, root: path.join(dataDir, `direct-${name}`) });
      const ns = 'apply-direct';
      const mounts = await s.prepare(ns, 'direct-w');
      assert.equal(mounts.length, 1);
      assert.equal(mounts[0]!.type, 'bind');
      const l = await layer({ name: 'etc', type: 'directory' }, { name: 'etc/hostname', body: 'direct' }, { name: 'etc/.wh.gone' }, { name: 'etc/.wh..wh..opq' });
      // With no mount(8) or umount(8) to be found, only an apply onto the source can succeed.
      const empty = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-nopath-'));
      const savedPath = process.env.PATH;
      const mountsBefore = mountTable();
      process.env.PATH = empty;
      let r;
      try {
        r = await applyDiff(mounts, Readable.from([gzipSync(l)]), TGZ);
      } finally {
        process.env.PATH = savedPath;
        await fs.rmdir(empty);
      }
      assert.deepEqual(r, { size: l.length, diffID: sha(l) });
      assert.equal(mountTable(), mountsBefore);
      // Native whiteouts: deletions only, nothing left for the whiteout or the opaque marker.
      const src = mounts[0]!.source;
      assert.deepEqual(await fs.readdir(path.join(src, 'etc')), ['hostname']);
      assert.equal(await fs.readFile(path.join(src, 'etc/hostname'), 'utf8'), 'direct');
      await s.commit(ns, 'direct', 'direct-w');

      // A read-only bind (a view) is mounted as given, so the write is refused by the kernel.
      const view = await s.view(ns, 'direct-view', 'direct');
      assert.equal(view[0]!.type, 'bind');
      assert.ok(view[0]!.options.includes('ro'));
      await assert.rejects(applyDiff(view, Readable.from([gzipSync(await layer({ name: 'etc/new', body: 'x' }))]), TGZ), /read-only/i);
      assert.equal(mountTable(), mountsBefore);
      assert.deepEqual(await fs.readdir(path.join(view[0]!.source, 'etc')), ['hostname']);
    });

    test('a refused layer leaves no mount behind', async () => {
      const s = new Snapshotter({ sql: pg.sql, nodeId: 'node-apply-fail', name, root: path.join(dataDir, `fail-${name}`) });
      const ns = 'apply-fail';
      await applyDiff(await s.prepare(ns, 'base-w'), Readable.from([await layer({ name: 'a', body: 'a' })]), 'application/vnd.oci.image.layer.v1.tar');
      await s.commit(ns, 'base', 'base-w');
      const mountsBefore = mountTable();
      for (const key of ['bad1', 'bad2']) {
        const bad = await layer({ name: 'etc/.wh..', body: '' });
        // bad1: parentless (bind, via a temp mount); bad2: on a parent (overlay upperdir for overlayfs).
        const mounts = await s.prepare(ns, key, key === 'bad2' ? 'base' : '');
        await assert.rejects(applyDiff(mounts, Readable.from([bad]), 'application/vnd.oci.image.layer.v1.tar'), (e) => isInvalidArgument(e));
      }
      assert.equal(mountTable(), mountsBefore);
    });
  });
}
