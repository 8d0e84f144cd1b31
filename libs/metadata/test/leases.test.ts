// LeaseStore and the collector's mark against a real PostgreSQL.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connectDb, migrate, type Sql } from '@flotilla/db';
import { ErrorClass, classOf } from '@flotilla/errdefs';
import { GarbageCollector, LeaseStore, metadataMigrations, type ReleasedResource } from '@flotilla/metadata';
import { startPostgres, testNamespace, type TestPostgres } from '@flotilla/testing';

let pg: TestPostgres;
let sql: Sql;
const deleted: { released: ReleasedResource[]; sync: boolean }[] = [];
let leases: LeaseStore;

before(async () => {
  pg = await startPostgres();
  sql = connectDb(pg.url);
  await migrate(sql, 'metadata', metadataMigrations);
  leases = new LeaseStore(sql, { onDeleted: (released, sync) => void deleted.push({ released, sync }) });
});
after(async () => {
  await sql?.end({ timeout: 5 });
  await pg?.stop();
});

const D = 'sha256:' + 'a'.repeat(64);
const cls = (c: string, msg?: RegExp) => (e: unknown) => classOf(e) === c && (!msg || msg.test((e as Error).message));

test('resources: containerd types, errors and listing order', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  await leases.create(ctx, 'l', {});
  await assert.rejects(leases.create(ctx, 'l', {}), cls(ErrorClass.AlreadyExists, /^lease "l": already exists$/));
  await leases.addResource(ctx, 'l', { type: 'snapshots/overlayfs', id: 'k1' });
  await leases.addResource(ctx, 'l', { type: 'content', id: D });
  await leases.addResource(ctx, 'l', { type: 'content', id: D });
  await leases.addResource(ctx, 'l', { type: 'ingests', id: 'ref1' });
  await assert.rejects(leases.addResource(ctx, 'l', { type: 'content', id: 'nope' }), cls(ErrorClass.InvalidArgument, /^invalid content resource id nope/));
  await assert.rejects(leases.addResource(ctx, 'l', { type: 'snapshots', id: 'k' }), cls(ErrorClass.InvalidArgument, /^invalid snapshot resource type snapshots/));
  await assert.rejects(leases.addResource(ctx, 'l', { type: 'containers', id: 'c' }), cls(ErrorClass.NotImplemented, /^resource type containers not supported yet/));
  await assert.rejects(leases.addResource(ctx, 'nope', { type: 'content', id: D }), cls(ErrorClass.NotFound, /^lease "nope": not found$/));
  // The lease is checked before the resource, as containerd does.
  await assert.rejects(leases.addResource(ctx, 'nope', { type: 'containers', id: 'c' }), cls(ErrorClass.NotFound, /^lease "nope": not found$/));
  assert.deepEqual(await leases.listResources(ctx, 'l'), [
    { type: 'content', id: D }, { type: 'ingests', id: 'ref1' }, { type: 'snapshots/overlayfs', id: 'k1' },
  ]);
  await leases.deleteResource(ctx, 'l', { type: 'ingests', id: 'ref1' });
  await leases.deleteResource(ctx, 'l', { type: 'ingests', id: 'never-there' });
  assert.equal((await leases.listResources(ctx, 'l')).length, 2);
  await leases.delete(ctx, 'l', true);
  const last = deleted.at(-1)!;
  assert.equal(last.sync, true);
  assert.deepEqual(last.released.map((r) => r.type).sort(), ['content', 'snapshots/overlayfs']);
  await assert.rejects(leases.listResources(ctx, 'l'), cls(ErrorClass.NotFound));
  await assert.rejects(leases.delete(ctx, 'l'), cls(ErrorClass.NotFound, /^lease "l": not found$/));
});

test('the collector removes expired leases and nothing a live lease holds', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  await leases.create(ctx, 'old', { 'containerd.io/gc.expire': new Date(Date.now() - 1000).toISOString() });
  await leases.create(ctx, 'new', { 'containerd.io/gc.expire': new Date(Date.now() + 3_600_000).toISOString() });
  await leases.create(ctx, 'bad', { 'containerd.io/gc.expire': 'not a time' });
  const removed: string[] = [];
  const gc = new GarbageCollector(sql, {
    removeContent: async (ns, d) => void removed.push(`${ns} ${d}`),
    removeSnapshot: async (node, ns, ss, key) => void removed.push(`${node} ${ns} ${ss}/${key}`),
  });
  const stats = await gc.collect();
  assert.ok(stats.leases >= 1);
  assert.deepEqual((await leases.list(ctx)).map((l) => l.id), ['bad', 'new']);
  assert.deepEqual(removed, []); // no content or snapshot tables here: nothing to sweep
});

test('create makes the namespace on first write; deleting a lease without resources releases nothing', async (t) => {
  const ns = testNamespace(t.name);
  const ctx = { namespace: ns };
  assert.equal((await sql`SELECT 1 FROM metadata_namespaces WHERE name = ${ns}`).length, 0);
  const l = await leases.create(ctx, 'empty', { a: '1', gone: '' });
  assert.deepEqual(l.labels, { a: '1' });
  assert.ok(l.createdAt && l.createdAt.seconds > 0);
  assert.equal((await sql`SELECT 1 FROM metadata_namespaces WHERE name = ${ns}`).length, 1);
  const before = deleted.length;
  await leases.delete(ctx, 'empty');
  assert.equal(deleted.length, before + 1);
  assert.deepEqual(deleted.at(-1), { released: [], sync: false });
  assert.deepEqual(await leases.list(ctx), []);
  await assert.rejects(leases.delete(ctx, 'empty'), cls(ErrorClass.NotFound, /^lease "empty": not found$/));
  assert.equal(deleted.length, before + 1);
});
