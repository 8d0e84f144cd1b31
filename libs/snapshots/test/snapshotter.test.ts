// Both snapshotters against a real PostgreSQL and real mounts: records, containerd's
// error classes, namespaces, labels, the exact mounts containerd returns, and trees that
// really stack when those mounts are mounted.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { migrate } from '@flotilla/db';
import { isAlreadyExists, isFailedPrecondition, isInvalidArgument, isNotFound } from '@flotilla/errdefs';
import { Snapshotter, snapshotMigrations, withTempMount, type Info, type SnapshotterName } from '@flotilla/snapshots';
import { startPg, type TestPg } from './pg.js';

let pg: TestPg;
let dataDir: string;

before(async () => {
  pg = await startPg();
  await migrate(pg.sql, 'snapshots', snapshotMigrations);
  dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-snapshots-'));
});

after(async () => {
  await pg?.stop();
  if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
});

const INDEX_OFF = existsSync('/sys/module/overlay/parameters/index') ? ['index=off'] : [];

async function collect(it: AsyncIterable<Info>): Promise<Info[]> {
  const out: Info[] = [];
  for await (const i of it) out.push(i);
  return out;
}

function make(name: SnapshotterName, node = 'node-a'): Snapshotter {
  return new Snapshotter({ sql: pg.sql, nodeId: node, name, root: path.join(dataDir, node, name) });
}

for (const name of ['overlayfs', 'native'] as const) {
  describe(`${name} snapshotter`, () => {
    test('prepare, commit, view and remove keep containerd records', async () => {
      const s = make(name);
      const ns = `lifecycle-${name}`;
      const m1 = await s.prepare(ns, 'base-active', '', { 'x/a': '1' });
      assert.equal(m1.length, 1);
      assert.equal(m1[0]!.type, 'bind');
      // containerd: overlayfs binds a parentless snapshot rw,rbind; native lists rbind first.
      assert.deepEqual(m1[0]!.options, name === 'native' ? ['rbind', 'rw'] : ['rw', 'rbind']);
      let info = await s.stat(ns, 'base-active');
      assert.equal(info.kind, 'active');
      assert.equal(info.parent, '');
      assert.deepEqual(info.labels, { 'x/a': '1' });
      assert.ok(info.createdAt instanceof Date);

      await s.commit(ns, 'base', 'base-active', { 'x/b': '2' });
      await assert.rejects(s.stat(ns, 'base-active'), (e) => isNotFound(e));
      info = await s.stat(ns, 'base');
      assert.equal(info.kind, 'committed');
      assert.deepEqual(info.labels, { 'x/b': '2' }, 'commit labels replace the active ones');

      await s.prepare(ns, 'child', 'base');
      await s.view(ns, 'look', 'base');
      const child = await s.stat(ns, 'child');
      assert.equal(child.parent, 'base');
      assert.equal((await s.stat(ns, 'look')).kind, 'view');

      assert.deepEqual((await collect(s.list(ns))).map((i) => [i.name, i.kind, i.parent]), [
        ['base', 'committed', ''],
        ['child', 'active', 'base'],
        ['look', 'view', 'base'],
      ]);
      assert.deepEqual((await collect(s.list(ns, (i) => i.kind === 'active'))).map((i) => i.name), ['child']);

      await assert.rejects(s.remove(ns, 'base'), (e) => isFailedPrecondition(e) && /cannot remove snapshot with child/.test((e as Error).message));
      await s.remove(ns, 'child');
      await s.remove(ns, 'look');
      await s.remove(ns, 'base');
      assert.deepEqual(await collect(s.list(ns)), []);
      // Nothing of theirs is left on disk once the removals (which run after Remove answers) end.
      await s.settled();
      assert.deepEqual(await fs.readdir(path.join(s.root, 'snapshots')), []);
    });

    test('remove takes the data out of use before it answers and deletes it after', async () => {
      const s = make(name, 'node-remove');
      const ns = `remove-${name}`;
      const base = path.join(s.root, 'snapshots');
      await s.prepare(ns, 'a');
      const [id] = await fs.readdir(base);
      // Enough entries that the deletion is still running when remove() answers.
      const tree = name === 'overlayfs' ? path.join(base, id!, 'fs') : path.join(base, id!);
      for (let i = 0; i < 200; i++) await fs.mkdir(path.join(tree, `d${i}`, 'x'), { recursive: true });
      await s.remove(ns, 'a');
      assert.ok(!existsSync(path.join(base, id!)), 'the snapshot directory is gone under its id at once');
      assert.ok(existsSync(path.join(base, `rm-${id}`)), 'its data is deleted after the call');
      await s.prepare(ns, 'a'); // the key is free again
      // cleanup() while the deletion runs joins it instead of failing on it.
      await s.cleanup();
      await s.settled();
      const left = await fs.readdir(base);
      assert.equal(left.length, 1);
      assert.ok(!left[0]!.startsWith('rm-'));
      await s.remove(ns, 'a');
      await s.settled();
      assert.deepEqual(await fs.readdir(base), []);
    });

    test('errors carry containerd classes', async () => {
      const s = make(name);
      const ns = `errors-${name}`;
      await s.prepare(ns, 'a');
      await assert.rejects(s.prepare(ns, 'a'), (e) => isAlreadyExists(e) && /snapshot "a": already exists/.test((e as Error).message));
      await assert.rejects(s.view(ns, 'a'), (e) => isAlreadyExists(e));
      await assert.rejects(s.prepare(ns, 'b', 'nope'), (e) => isNotFound(e) && /parent snapshot nope does not exist/.test((e as Error).message));
      await assert.rejects(s.prepare(ns, 'b', 'a'), (e) => isInvalidArgument(e) && /not committed/.test((e as Error).message));
      await assert.rejects(s.prepare(ns, ''), (e) => isInvalidArgument(e));
      await assert.rejects(s.stat(ns, 'nope'), (e) => isNotFound(e));
      await assert.rejects(s.mounts(ns, 'nope'), (e) => isNotFound(e));
      await assert.rejects(s.remove(ns, 'nope'), (e) => isNotFound(e));
      await assert.rejects(s.usage(ns, 'nope'), (e) => isNotFound(e));
      await assert.rejects(s.commit(ns, 'x', 'nope'), (e) => isNotFound(e));
      await s.view(ns, 'v');
      await assert.rejects(s.commit(ns, 'v-c', 'v'), (e) => isFailedPrecondition(e));
      await s.commit(ns, 'a-c', 'a');
      await assert.rejects(s.commit(ns, 'again', 'a'), (e) => isNotFound(e), 'the active key is gone after commit');
      await assert.rejects(s.commit(ns, 'again', 'a-c'), (e) => isFailedPrecondition(e) && /is not active/.test((e as Error).message));
      await s.prepare(ns, 'a2', 'a-c');
      await assert.rejects(s.commit(ns, 'a-c', 'a2'), (e) => isAlreadyExists(e));
      await assert.rejects(s.commit(ns, 'v', 'a2'), (e) => isAlreadyExists(e));
      await assert.rejects(s.mounts(ns, 'a-c'), (e) => isFailedPrecondition(e));
      // Target, key and parent are read in one statement; the checks keep containerd's order.
      const ref = 'containerd.io/snapshot.ref';
      await assert.rejects(s.prepare(ns, 'a2', 'nope', { [ref]: 'a-c' }), (e) => isAlreadyExists(e) && /target snapshot "a-c": already exists/.test((e as Error).message));
      await assert.rejects(s.prepare(ns, 'a2', 'nope', { [ref]: 'free' }), (e) => isAlreadyExists(e) && /snapshot "a2": already exists/.test((e as Error).message));
      await assert.rejects(s.prepare(ns, 'a-c', 'a-c'), (e) => isAlreadyExists(e) && /snapshot "a-c": already exists/.test((e as Error).message));
      await assert.rejects(s.prepare(ns, 'b', 'a2', { [ref]: 'free' }), (e) => isInvalidArgument(e) && /not committed/.test((e as Error).message));
      assert.deepEqual((await s.prepare(ns, 'b', 'a-c', { [ref]: 'free' })).length, 1);
      await assert.rejects(s.commit(ns, 'a2', 'a2'), (e) => isAlreadyExists(e) && /snapshot "a2": already exists/.test((e as Error).message));
      // Remove: NotFound in another namespace, FailedPrecondition with a child, then gone.
      await assert.rejects(s.remove(`${ns}-other`, 'a-c'), (e) => isNotFound(e) && /snapshot a-c does not exist/.test((e as Error).message));
      await assert.rejects(s.remove(ns, 'a-c'), (e) => isFailedPrecondition(e));
      await s.remove(ns, 'b');
      await s.prepare(ns, 'b', 'a-c', { [ref]: 'free' });
      await s.remove(ns, 'b');
      // A failed create leaves no record and no directory behind.
      await s.settled();
      const before = (await fs.readdir(path.join(s.root, 'snapshots'))).length;
      await assert.rejects(s.prepare(ns, 'a2'), (e) => isAlreadyExists(e));
      assert.equal((await fs.readdir(path.join(s.root, 'snapshots'))).length, before);
    });

    test('namespaces and nodes isolate keys', async () => {
      const s = make(name);
      await s.prepare(`ns1-${name}`, 'same');
      await s.prepare(`ns2-${name}`, 'same');
      await s.commit(`ns1-${name}`, 'c', 'same');
      assert.equal((await s.stat(`ns2-${name}`, 'same')).kind, 'active');
      await assert.rejects(s.stat(`ns2-${name}`, 'c'), (e) => isNotFound(e));
      await assert.rejects(s.prepare(`ns2-${name}`, 'child', 'c'), (e) => isNotFound(e), 'parents resolve within the namespace');
      const other = make(name, 'node-b');
      await assert.rejects(other.stat(`ns1-${name}`, 'c'), (e) => isNotFound(e));
      await other.prepare(`ns1-${name}`, 'c');
    });

    test('update follows containerd field paths', async () => {
      const s = make(name);
      const ns = `update-${name}`;
      await s.prepare(ns, 'k', '', { a: '1', b: '2' });
      const t0 = (await s.stat(ns, 'k')).updatedAt;
      let info = await s.update(ns, { name: 'k', labels: { c: '3' } });
      assert.deepEqual(info.labels, { c: '3' });
      assert.ok(info.updatedAt >= t0);
      info = await s.update(ns, { name: 'k', labels: { d: '4', c: 'ignored' } }, ['labels.d']);
      assert.deepEqual(info.labels, { c: '3', d: '4' });
      info = await s.update(ns, { name: 'k', labels: {} }, ['labels.c']);
      assert.deepEqual(info.labels, { d: '4' });
      info = await s.update(ns, { name: 'k', labels: { e: '5' } }, ['labels']);
      assert.deepEqual(info.labels, { e: '5' });
      assert.deepEqual((await s.stat(ns, 'k')).labels, { e: '5' });
      await assert.rejects(s.update(ns, { name: 'k', labels: {} }, ['parent']), (e) => isInvalidArgument(e) && /cannot update "parent" field on snapshot "k"/.test((e as Error).message));
      await assert.rejects(s.update(ns, { name: 'nope', labels: {} }), (e) => isNotFound(e));
      await assert.rejects(s.update(ns, { name: 'k', labels: { big: 'x'.repeat(5000) } }), (e) => isInvalidArgument(e));
    });

    test('real mounts stack: a child sees its parent, a view sees the chain', async () => {
      const s = make(name);
      const ns = `mounts-${name}`;
      const base = await s.prepare(ns, 'base-w');
      await withTempMount(base, async (root) => {
        await fs.mkdir(path.join(root, 'etc'));
        await fs.writeFile(path.join(root, 'etc/hostname'), 'base');
        await fs.writeFile(path.join(root, 'etc/doomed'), 'x');
      });
      const u = await s.usage(ns, 'base-w');
      assert.ok(u.inodes >= 4 && u.size > 0, JSON.stringify(u));
      await s.commit(ns, 'base', 'base-w');
      assert.deepEqual(await s.usage(ns, 'base'), u, 'committed usage is the one measured at commit');

      const mid = await s.prepare(ns, 'mid-w', 'base');
      assert.deepEqual(await s.mounts(ns, 'mid-w'), mid);
      await withTempMount(mid, async (root) => {
        assert.equal(await fs.readFile(path.join(root, 'etc/hostname'), 'utf8'), 'base');
        await fs.writeFile(path.join(root, 'etc/hostname'), 'mid');
        await fs.rm(path.join(root, 'etc/doomed'));
        await fs.writeFile(path.join(root, 'added'), 'mid');
      });
      await s.commit(ns, 'mid', 'mid-w');

      const view = await s.view(ns, 'top', 'mid');
      await withTempMount(view, async (root) => {
        assert.deepEqual((await fs.readdir(root)).sort(), ['added', 'etc']);
        assert.deepEqual(await fs.readdir(path.join(root, 'etc')), ['hostname']);
        assert.equal(await fs.readFile(path.join(root, 'etc/hostname'), 'utf8'), 'mid');
        await assert.rejects(fs.writeFile(path.join(root, 'x'), 'x'), { code: 'EROFS' });
      });
      // The base is untouched by its child.
      const baseView = await s.view(ns, 'base-view', 'base');
      await withTempMount(baseView, async (root) => {
        assert.equal(await fs.readFile(path.join(root, 'etc/hostname'), 'utf8'), 'base');
        assert.ok(existsSync(path.join(root, 'etc/doomed')));
      });
    });

    test('cleanup removes directories no record points at', async () => {
      const s = make(name, 'node-cleanup');
      const ns = `cleanup-${name}`;
      await s.prepare(ns, 'keep');
      const orphan = path.join(s.root, 'snapshots', 'rm-999999');
      await fs.mkdir(orphan, { recursive: true });
      await s.cleanup();
      assert.ok(!existsSync(orphan));
      assert.equal((await fs.readdir(path.join(s.root, 'snapshots'))).length, 1);
      await withTempMount(await s.mounts(ns, 'keep'), async () => {});
    });
  });
}

describe('exact mounts', () => {
  test('overlayfs returns containerd overlay mounts', async () => {
    const s = make('overlayfs', 'node-exact');
    const ns = 'exact';
    const dir = (id: string) => path.join(s.root, 'snapshots', id);
    const idOf = async (m: { source: string; options: string[] }[]) => {
      const p = m[0]!.source !== 'overlay' ? m[0]!.source : m[0]!.options.find((o) => o.startsWith('upperdir='))!.slice(9);
      return path.basename(path.dirname(p));
    };
    const m1 = await s.prepare(ns, 'l1-w');
    const id1 = await idOf(m1);
    assert.deepEqual(m1, [{ type: 'bind', source: path.join(dir(id1), 'fs'), target: '', options: ['rw', 'rbind'] }]);
    assert.ok(existsSync(path.join(dir(id1), 'work')));
    await s.commit(ns, 'l1', 'l1-w');
    const m2 = await s.prepare(ns, 'l2-w', 'l1');
    const id2 = await idOf(m2);
    assert.deepEqual(m2, [{ type: 'overlay', source: 'overlay', target: '', options: [...INDEX_OFF, `workdir=${dir(id2)}/work`, `upperdir=${dir(id2)}/fs`, `lowerdir=${dir(id1)}/fs`] }]);
    await s.commit(ns, 'l2', 'l2-w');
    const v1 = await s.view(ns, 'v1', 'l1');
    assert.deepEqual(v1, [{ type: 'bind', source: `${dir(id1)}/fs`, target: '', options: ['ro', 'rbind'] }]);
    const v2 = await s.view(ns, 'v2', 'l2');
    assert.deepEqual(v2, [{ type: 'overlay', source: 'overlay', target: '', options: [...INDEX_OFF, `lowerdir=${dir(id2)}/fs:${dir(id1)}/fs`] }]);
    const v0 = await s.view(ns, 'v0');
    assert.equal(v0[0]!.type, 'bind');
    assert.deepEqual(v0[0]!.options, ['ro', 'rbind']);
  });

  test('native returns binds of full copies', async () => {
    const s = make('native', 'node-exact');
    const ns = 'exact';
    const m1 = await s.prepare(ns, 'l1-w');
    assert.equal(path.dirname(m1[0]!.source), path.join(s.root, 'snapshots'));
    await fs.writeFile(path.join(m1[0]!.source, 'f'), 'one');
    await s.commit(ns, 'l1', 'l1-w');
    const m2 = await s.prepare(ns, 'l2-w', 'l1');
    assert.notEqual(m2[0]!.source, m1[0]!.source);
    assert.deepEqual(m2[0]!.options, ['rbind', 'rw']);
    assert.equal(await fs.readFile(path.join(m2[0]!.source, 'f'), 'utf8'), 'one', 'a native child starts as a copy');
    const v = await s.view(ns, 'v', 'l1');
    assert.deepEqual(v, [{ type: 'bind', source: m1[0]!.source, target: '', options: ['rbind', 'ro'] }]);
  });
});
