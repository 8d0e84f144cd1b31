// ContainerStore create against a real PostgreSQL: the namespace and the container are
// written by one statement (one round trip and one commit on the path of every ctr run),
// and a failed create writes neither.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { containers as capi } from '@flotilla/api';
import { connectDb, migrate, type Sql } from '@flotilla/db';
import { ErrorClass, classOf } from '@flotilla/errdefs';
import { MetadataStore, metadataMigrations } from '@flotilla/metadata';
import { startPostgres, testNamespace, type TestPostgres } from '@flotilla/testing';

let pg: TestPostgres;
let sql: Sql;
let store: MetadataStore;
/** Statements the store sent (tagged-template calls on its sql). */
let statements: string[] = [];

before(async () => {
  pg = await startPostgres();
  sql = connectDb(pg.url);
  await migrate(sql, 'metadata', metadataMigrations);
  const counted = new Proxy(sql, {
    apply(target, self, args: unknown[]) {
      const strings = args[0] as TemplateStringsArray | undefined;
      if (Array.isArray(strings) && 'raw' in strings) statements.push(strings.join('$').trim().split(/\s+/).slice(0, 3).join(' '));
      return Reflect.apply(target, self, args);
    },
  });
  store = new MetadataStore(counted, () => {});
});
after(async () => {
  await sql?.end({ timeout: 5 });
  await pg?.stop();
});

const container = (id: string) =>
  capi.Container.fromPartial({ id, runtime: { name: 'io.containerd.runc.v2' }, spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Spec', value: Buffer.from('{}') } });

test('create writes the namespace and the container in one statement', async (t) => {
  const ns = testNamespace(t.name);
  statements = [];
  await store.containerCreate({ namespace: ns }, container('c1'));
  assert.deepEqual(statements, ['WITH ns AS']);
  assert.equal((await sql`SELECT count(*)::int AS n FROM metadata_namespaces WHERE name = ${ns}`)[0]!.n, 1);
  assert.equal((await store.containerGet({ namespace: ns }, 'c1')).id, 'c1');
  // In an existing namespace, the same.
  statements = [];
  await store.containerCreate({ namespace: ns }, container('c2'));
  assert.deepEqual(statements, ['WITH ns AS']);
  await assert.rejects(store.containerCreate({ namespace: ns }, container('c2')), (e) => classOf(e) === ErrorClass.AlreadyExists && /^container "c2": already exists$/.test((e as Error).message));
  assert.equal((await sql`SELECT count(*)::int AS n FROM metadata_containers WHERE namespace = ${ns}`)[0]!.n, 2);
});
