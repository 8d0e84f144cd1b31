// ImageStore against a real PostgreSQL: containerd's validation texts, field-path updates,
// filters and events (what ctr cannot reach: target and annotation updates).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connectDb, migrate, type Sql } from '@flotilla/db';
import { ErrorClass, classOf } from '@flotilla/errdefs';
import { ImageStore, imageMigrations } from '@flotilla/images';
import { metadataMigrations } from '@flotilla/metadata';
import { startPostgres, testNamespace, type TestPostgres } from '@flotilla/testing';

let pg: TestPostgres;
let sql: Sql;
const events: { ns: string; topic: string; ev: any }[] = [];
const released: unknown[] = [];
let store: ImageStore;

before(async () => {
  pg = await startPostgres();
  sql = connectDb(pg.url);
  await migrate(sql, 'metadata', metadataMigrations);
  await migrate(sql, 'images', imageMigrations);
  store = new ImageStore(sql, (ns, topic, _u, _t, ev) => events.push({ ns, topic, ev }), {
    onDeleted: async (r, sync) => void released.push({ r, sync }),
  });
});
after(async () => {
  await sql?.end({ timeout: 5 });
  await pg?.stop();
});

const D1 = 'sha256:' + '1'.repeat(64);
const D2 = 'sha256:' + '2'.repeat(64);
const target = (digest = D1) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: 10, annotations: {} });
const img = (name: string, labels: Record<string, string> = {}, t = target()) => ({ name, labels, target: t, createdAt: undefined, updatedAt: undefined });
const cls = (c: string, msg?: RegExp) => (e: unknown) => classOf(e) === c && (!msg || msg.test((e as Error).message));

test('create validates as containerd does', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  await assert.rejects(store.create(ctx, img('')), cls(ErrorClass.InvalidArgument, /^Image.Name required: invalid argument$/));
  await assert.rejects(store.create(ctx, img('a', {}, { ...target(), digest: 'sha256:abc' })), cls(ErrorClass.InvalidArgument, /^Target.Digest "sha256:abc" invalid: invalid checksum digest length: invalid argument$/));
  await assert.rejects(store.create(ctx, img('a', {}, { ...target(), digest: 'md5:abc' })), cls(ErrorClass.InvalidArgument, /unsupported digest algorithm/));
  await assert.rejects(store.create(ctx, img('a', {}, { ...target(), size: 0 })), cls(ErrorClass.InvalidArgument, /^Target.Size must be greater than zero/));
  await assert.rejects(store.create(ctx, img('a', {}, { ...target(), mediaType: '' })), cls(ErrorClass.InvalidArgument, /^Target.MediaType must be set/));
  await assert.rejects(store.create(ctx, img('a', { k: 'v'.repeat(5000) })), cls(ErrorClass.InvalidArgument, /^image.Labels: label key and value greater than maximum size/));
  await assert.rejects(store.create({}, img('a')), cls(ErrorClass.FailedPrecondition));
  const out = await store.create(ctx, img('a', { x: '1', empty: '' }));
  assert.deepEqual(out.labels, { x: '1' });
  await assert.rejects(store.create(ctx, img('a')), cls(ErrorClass.AlreadyExists, /^image "a": already exists$/));
  assert.deepEqual(events.filter((e) => e.ns === ctx.namespace).map((e) => [e.topic, e.ev.name]), [['/images/create', 'a']]);
});

test('update follows field paths; no paths replaces labels and target', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  await store.create(ctx, img('u', { keep: '1', drop: '2' }, { ...target(), annotations: { an: 'v' } }));
  let u = await store.update(ctx, img('u', { drop: '', add: '3' }), ['labels.drop', 'labels.add', 'labels.absent']);
  assert.deepEqual(u.labels, { keep: '1', add: '3' });
  u = await store.update(ctx, img('u', {}, { ...target(D2), annotations: { n: 'w' } }), ['annotations.n']);
  assert.equal(u.target!.digest, D1);
  assert.deepEqual(u.target!.annotations, { an: 'v', n: 'w' });
  u = await store.update(ctx, img('u', {}, target(D2)), ['target']);
  assert.equal(u.target!.digest, D2);
  u = await store.update(ctx, img('u', { only: 'this' }, target(D1)), []);
  assert.deepEqual(u.labels, { only: 'this' });
  assert.equal(u.target!.digest, D1);
  await assert.rejects(store.update(ctx, img('u'), ['name']), cls(ErrorClass.InvalidArgument, /^cannot update "name" field on image "u": invalid argument$/));
  await assert.rejects(store.update(ctx, img('u', {}, { ...target(), size: -1 }), ['target']), cls(ErrorClass.InvalidArgument, /Target.Size/));
  await assert.rejects(store.update(ctx, img('nope'), []), cls(ErrorClass.NotFound, /^image "nope": not found$/));
  assert.equal(events.filter((e) => e.ns === ctx.namespace && e.topic === '/images/update').length, 4);
});

test('list filters and delete reports what it released', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  await store.create(ctx, img('x/a', { team: 'blue' }));
  await store.create(ctx, img('x/b', { team: 'red' }, target(D2)));
  const names = async (f: string[]) => (await store.list(ctx, f)).map((i) => i.name);
  assert.deepEqual(await names([]), ['x/a', 'x/b']);
  assert.deepEqual(await names(['labels.team==red']), ['x/b']);
  assert.deepEqual(await names([`target.digest==${D1}`]), ['x/a']);
  assert.deepEqual(await names(['name~=b$', 'labels.team==blue']), ['x/a', 'x/b']);
  await assert.rejects(store.list(ctx, ['name==']), cls(ErrorClass.InvalidArgument, /invalid argument: invalid argument$/));
  await store.delete(ctx, 'x/b', true);
  assert.deepEqual(released.at(-1), { r: [{ namespace: ctx.namespace, type: 'content', id: D2 }], sync: true });
  await assert.rejects(store.delete(ctx, 'x/b'), cls(ErrorClass.NotFound, /^image "x\/b": not found$/));
  assert.deepEqual(await names([]), ['x/a']);
});
