// Container lists are built from the stored bytes (spec, runtime options and extensions
// passed through undecoded): they must be byte for byte what encoding the decoded
// containers gives, for every kind of field, and filter the same. Real PostgreSQL.
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
  assert.deepEqual(all.map((c) => c.id), ['a-plain', 'b-full', 'c-empty-options']);
  assert.equal(all[1]!.extensions.ext1?.typeUrl, 'x/y');
  assert.deepEqual([...all[1]!.extensions.ext1!.value], [7]);
  assert.deepEqual(Object.keys(all[1]!.labels).sort(), ['env', 'uni', 'z.long/label']);
  // All of them concatenated: the ListContainersResponse the metadata service sends.
  const enc = await collect(store.containerListEncoded(ctx, []));
  assert.deepEqual(capi.ListContainersResponse.decode(Buffer.concat(enc)).containers, all);
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
