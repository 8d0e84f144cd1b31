// Get and List send each container's stored message (written with the columns on create
// and update); a row without one is encoded from its columns. Either way the bytes must be
// what encoding the containers decoded from the columns gives, for every kind of field,
// and filter the same: the stored message and the columns never disagree. Real PostgreSQL.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { containers as capi } from '@flotilla/api';
import { connectDb, migrate, type Sql } from '@flotilla/db';
import { MetadataStore, asField, metadataMigrations } from '@flotilla/metadata';
import { startPostgres, testNamespace, type TestPostgres } from '@flotilla/testing';

let pg: TestPostgres;
let sql: Sql;
let store: MetadataStore;

before(async () => {
  pg = await startPostgres();
  sql = connectDb(pg.url);
  await migrate(sql, 'metadata', metadataMigrations);
  store = new MetadataStore(sql, () => {});
});
after(async () => {
  await sql?.end({ timeout: 5 });
  await pg?.stop();
});

const any = (typeUrl: string, value: number[]) => ({ typeUrl, value: Buffer.from(value) });

async function collect<T>(it: AsyncIterable<T[]>): Promise<T[]> {
  const out: T[] = [];
  for await (const page of it) out.push(...page);
  return out;
}

test('encoded list equals the encoded containers, filters included', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  const base = { runtime: { name: 'io.containerd.runc.v2', options: undefined }, spec: any('types.containerd.io/opencontainers/runtime-spec/1/Spec', [1, 2, 3]) };
  const made = [
    { ...base, id: 'a-plain', labels: {}, image: '', snapshotter: '', snapshotKey: '', extensions: {} },
    // Label keys of every length and kind: the column (jsonb) orders them by byte length,
    // then bytewise, and JSON.parse puts integer-like keys first.
    { ...base, id: 'a-order', labels: { zz: '1', a: '2', 10: 'x', 2: 'y', ä: 'z', b: '', B: 'q', 'aa.b': 'r', '€': 's', '01': 't' }, image: '', snapshotter: '', snapshotKey: '', extensions: {} },
    {
      id: 'b-full', labels: { env: 'prod', 'z.long/label': 'x'.repeat(300), empty: '', uni: 'ä€😀' }, image: 'docker.io/library/busybox:latest',
      runtime: { name: 'io.containerd.runc.v2', options: any('containerd.runc.v1.Options', [8, 1]) },
      spec: any('types.containerd.io/opencontainers/runtime-spec/1/Spec', Array.from({ length: 3000 }, (_, i) => i & 0xff)),
      snapshotter: 'overlayfs', snapshotKey: 'b-full', extensions: { ext1: any('x/y', [7]), ext2: any('', []) },
    },
    { ...base, id: 'c-empty-options', labels: { env: 'dev' }, image: 'img', runtime: { name: 'rt', options: any('', []) }, snapshotter: '', snapshotKey: '', extensions: {} },
  ];
  for (const c of made) await store.containerCreate(ctx, capi.Container.fromPartial(c));
  for (const filters of [[], ['labels.env==prod'], ['image==img', 'id==a-plain'], ['runtime.name==rt'], ['labels.nope']]) {
    const decoded = await collect(store.containerList(ctx, filters));
    const encoded = await collect(store.containerListEncoded(ctx, filters));
    // Each one is a ListContainerMessage, byte for byte what the codec gives.
    assert.deepEqual(encoded.map((b) => b.toString('hex')), decoded.map((c) => Buffer.from(capi.ListContainerMessage.encode({ container: c }).finish()).toString('hex')), `filters ${filters.join(' ')}`);
    assert.deepEqual(encoded.map((b) => capi.ListContainerMessage.decode(b).container), decoded);
  }
  const all = await collect(store.containerList(ctx, []));
  assert.deepEqual(all.map((c) => c.id), ['a-order', 'a-plain', 'b-full', 'c-empty-options']);
  all.shift();
  assert.equal(all[1]!.extensions.ext1?.typeUrl, 'x/y');
  assert.deepEqual([...all[1]!.extensions.ext1!.value], [7]);
  assert.deepEqual(Object.keys(all[1]!.labels).sort(), ['env', 'uni', 'z.long/label']);
  // All of them concatenated: the ListContainersResponse the metadata service sends.
  const enc = await collect(store.containerListEncoded(ctx, []));
  assert.deepEqual(capi.ListContainersResponse.decode(Buffer.concat(enc)).containers.slice(1), all);
  await sameAsColumns(ctx);
  assert.deepEqual(asField(1, Buffer.from([1, 2])), Buffer.from([10, 2, 1, 2]));
});

test('a list longer than one page keeps id order and every container', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  const ids = Array.from({ length: 1205 }, (_, i) => `c${String(i).padStart(5, '0')}`);
  await sql`INSERT INTO metadata_namespaces (name) VALUES (${ctx.namespace}) ON CONFLICT DO NOTHING`;
  for (let i = 0; i < ids.length; i += 100) {
    await Promise.all(ids.slice(i, i + 100).map((id) => store.containerCreate(ctx, capi.Container.fromPartial({ id, runtime: { name: 'r' }, spec: any('s', [1]) }))));
  }
  const encoded = await collect(store.containerListEncoded(ctx, []));
  assert.deepEqual(encoded.map((b) => capi.ListContainerMessage.decode(b).container!.id), ids);
});

/** Every row of the namespace has a stored message (or none, when `stored` is false). */
async function stored(ns: string): Promise<boolean[]> {
  return (await sql`SELECT message IS NOT NULL AS m FROM metadata_containers WHERE namespace = ${ns} ORDER BY id`).map((r) => r.m as boolean);
}

/**
 * What clients get (List, ListStream, Get) equals, byte for byte, the containers decoded
 * from the columns, encoded; and the timestamps in the bytes are the columns' own, to the
 * microsecond.
 */
async function sameAsColumns(ctx: { namespace: string }, filters: string[] = []): Promise<capi.Container[]> {
  const decoded = await collect(store.containerList(ctx, filters));
  const encoded = await collect(store.containerListEncoded(ctx, filters));
  const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
  assert.deepEqual(encoded.map(hex), decoded.map((c) => hex(capi.ListContainerMessage.encode({ container: c }).finish())), `list ${filters.join(' ')}`);
  for (const c of decoded) {
    assert.equal(hex(await store.containerGetEncoded(ctx, c.id)), hex(capi.GetContainerResponse.encode({ container: c }).finish()), `get ${c.id}`);
  }
  const micros = await sql`SELECT id, (extract(epoch FROM created_at) * 1e6)::bigint::text AS c, (extract(epoch FROM updated_at) * 1e6)::bigint::text AS u
    FROM metadata_containers WHERE namespace = ${ctx.namespace} AND message IS NOT NULL ORDER BY id`;
  const us = (t: { seconds: number; nanos: number } | undefined) => String(BigInt(t!.seconds) * 1_000_000n + BigInt(t!.nanos / 1000));
  for (const r of micros) {
    if (!decoded.some((d) => d.id === r.id)) continue;
    const c = capi.ListContainerMessage.decode(encoded[decoded.findIndex((d) => d.id === r.id)]!).container!;
    assert.deepEqual([us(c.createdAt), us(c.updatedAt)], [r.c, r.u], `timestamps of ${r.id}`);
  }
  return decoded;
}

test('updates rewrite the stored message with the columns; Create and Update answer with it', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  const spec = any('types.containerd.io/opencontainers/runtime-spec/1/Spec', [1, 2, 3]);
  const base = capi.Container.fromPartial({
    id: 'u1', labels: { a: '1', b: '2' }, image: 'img', runtime: { name: 'io.containerd.runc.v2' }, spec,
    snapshotter: 'native', snapshotKey: 'k1', extensions: { e1: any('x/e', [1]) },
  });
  const created = await store.containerCreate(ctx, base);
  assert.deepEqual(capi.CreateContainerResponse.decode(created.encoded).container, created.container);
  assert.deepEqual(created.container.createdAt, created.container.updatedAt);
  const steps: [Partial<capi.Container>, string[]][] = [
    [{ labels: { a: 'x', zz: 'new', 7: 'n' } }, ['labels.a', 'labels.b', 'labels.zz', 'labels.7']],
    [{ extensions: { e2: any('x/f', [2]) } }, ['extensions.e1', 'extensions.e2']],
    [{ image: 'img2', spec: any(spec.typeUrl, [4, 5]), snapshotKey: 'k2' }, ['image', 'spec', 'snapshotkey']],
    [{ labels: { only: 'this', gone: '' }, extensions: {}, image: 'img3', snapshotKey: 'k3', spec }, []],
  ];
  let before = created.container;
  for (const [change, paths] of steps) {
    await new Promise((r) => setTimeout(r, 2)); // a later updated_at than the last
    const u = await store.containerUpdate(ctx, { ...base, ...change }, paths);
    assert.deepEqual(capi.UpdateContainerResponse.decode(u.encoded).container, u.container);
    assert.deepEqual(u.encoded, await store.containerGetEncoded(ctx, 'u1'));
    assert.deepEqual(u.container.createdAt, created.container.createdAt);
    assert.notDeepEqual(u.container.updatedAt, before.updatedAt);
    const [listed] = await sameAsColumns(ctx);
    assert.deepEqual(listed, u.container);
    before = u.container;
  }
  assert.deepEqual(before.labels, { only: 'this' });
  assert.deepEqual(await stored(ctx.namespace), [true]);
});

test('rows without a stored message list the same, and get one at start-up', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  const src = { namespace: testNamespace(t.name + ' source') };
  for (const id of ['l1', 'l2', 'l3']) {
    await store.containerCreate(src, capi.Container.fromPartial({
      id, labels: { [id]: 'v', 10: 'n', a: 'b' }, image: 'img', runtime: { name: 'rt', options: any('o', [1]) }, spec: any('s', [9, 9]),
      snapshotter: 'overlayfs', snapshotKey: id, extensions: { e: any('e', [3]) },
    }));
  }
  // As rows written before the message column (or by an older replica): now() timestamps,
  // to the microsecond.
  await sql`INSERT INTO metadata_namespaces (name) VALUES (${ctx.namespace})`;
  await sql`INSERT INTO metadata_containers (namespace, id, labels, image, runtime_name, runtime_options, spec, snapshotter, snapshot_key, extensions)
    SELECT ${ctx.namespace}, id, labels, image, runtime_name, runtime_options, spec, snapshotter, snapshot_key, extensions
    FROM metadata_containers WHERE namespace = ${src.namespace}`;
  assert.deepEqual(await stored(ctx.namespace), [false, false, false]);
  const legacy = await sameAsColumns(ctx);
  await sameAsColumns(ctx, ['labels.l2']);
  assert.equal(legacy.length, 3);
  const legacyBytes = await collect(store.containerListEncoded(ctx, []));

  // An update stores the message of its row; encodeMissing those of the others, once.
  await store.containerUpdate(ctx, capi.Container.fromPartial({ id: 'l2', labels: { x: 'y' } }), ['labels.x']);
  assert.deepEqual(await stored(ctx.namespace), [false, true, false]);
  await sameAsColumns(ctx);
  assert.ok((await store.containerEncodeMissing()) >= 2);
  assert.deepEqual(await stored(ctx.namespace), [true, true, true]);
  assert.equal(await store.containerEncodeMissing(), 0);
  const after = await collect(store.containerListEncoded(ctx, []));
  assert.deepEqual([after[0], after[2]], [legacyBytes[0], legacyBytes[2]]);
  await sameAsColumns(ctx);
  await sameAsColumns(ctx, ['labels.x==y']);
});

test('a change to the columns that does not write the message drops it', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  await store.containerCreate(ctx, capi.Container.fromPartial({ id: 'h1', labels: { a: '1' }, runtime: { name: 'r' }, spec: any('s', [1]) }));
  // Rewriting a row with itself changes nothing: the message stays.
  await sql`UPDATE metadata_containers SET labels = labels WHERE namespace = ${ctx.namespace}`;
  assert.deepEqual(await stored(ctx.namespace), [true]);
  // A hand edit (or an older replica's update) of any column.
  await sql`UPDATE metadata_containers SET labels = '{"a": "2"}' WHERE namespace = ${ctx.namespace}`;
  assert.deepEqual(await stored(ctx.namespace), [false]);
  const [c] = await sameAsColumns(ctx);
  assert.deepEqual(c!.labels, { a: '2' });
  await sql`UPDATE metadata_containers SET message = NULL WHERE namespace = ${ctx.namespace}`;
  await store.containerEncodeMissing();
  await sql`UPDATE metadata_containers SET spec = '\\x0a0173' WHERE namespace = ${ctx.namespace}`;
  assert.deepEqual(await stored(ctx.namespace), [false]);
  assert.equal((await sameAsColumns(ctx))[0]!.spec!.typeUrl, 's');
});

test('a list stopped after its first page leaves the store usable', async (t) => {
  const ctx = { namespace: testNamespace(t.name) };
  await sql`INSERT INTO metadata_namespaces (name) VALUES (${ctx.namespace})`;
  for (let i = 0; i < 2000; i += 100) {
    await Promise.all(Array.from({ length: 100 }, (_, j) => store.containerCreate(ctx, capi.Container.fromPartial({ id: `s${String(i + j).padStart(5, '0')}`, runtime: { name: 'r' }, spec: any('s', [1]) }))));
  }
  // Exactly two full pages: the list ends on an empty one.
  const all = await collect(store.containerListEncoded(ctx, []));
  assert.equal(all.length, 2000);
  for await (const page of store.containerListEncoded(ctx, [])) {
    assert.equal(page.length, 1000);
    break;
  }
  assert.equal((await collect(store.containerListEncoded(ctx, ['id==s01999']))).length, 1);
});
