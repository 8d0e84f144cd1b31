// The per-ref writer lock against a real PostgreSQL: a second writer for a ref whose writer
// is still open is Unavailable after containerd's ten tries, but one whose writer is
// closing (its client ended the stream; the backend still flushing) waits for that close and
// resumes the ingest, however long the close takes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connectDb, migrate, type Sql } from '@flotilla/db';
import { isUnavailable } from '@flotilla/errdefs';
import { ContentStore, DiskBackend, contentMigrations } from '@flotilla/content';
import { startPostgres, type TestPostgres } from '@flotilla/testing';

let pg: TestPostgres;
let sql: Sql;
let root: string;
let store: ContentStore;
/** Closes of ingest writers wait for this while it is set. */
let closeGate: Promise<void> | undefined;

before(async () => {
  pg = await startPostgres();
  sql = connectDb(pg.url);
  await migrate(sql, 'content', contentMigrations);
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-reflock-'));
  const disk = new DiskBackend(root);
  await disk.init();
  // The disk backend, with ingest writers whose close can be held back.
  const backend = Object.create(disk) as DiskBackend;
  backend.writer = async (key, ref, total) => {
    const w = await disk.writer(key, ref, total);
    const close = w.close.bind(w);
    return Object.assign(w, { close: async () => { await closeGate; await close(); } });
  };
  store = new ContentStore({ sql, backend });
});

after(async () => {
  await sql?.end();
  await pg?.stop();
  if (root) await fs.rm(root, { recursive: true, force: true });
});

const ctx = { namespace: 'ns1' };

test('a writer still open holds its ref: Unavailable after the tries', async () => {
  const w = await store.writer(ctx, 'open-ref', { size: 0, digest: '' });
  try {
    await assert.rejects(store.writer(ctx, 'open-ref', { size: 0, digest: '' }), (e: Error) => isUnavailable(e) && /ref ns1\/open-ref locked for/.test(e.message));
  } finally {
    await w.close();
  }
});

test('a writer that is closing frees its ref once closed, even after longer than the tries', async () => {
  const w1 = await store.writer(ctx, 'closing-ref', { size: 0, digest: '' });
  await w1.write(Buffer.from('hello'));
  let open!: () => void;
  closeGate = new Promise((r) => (open = r));
  const closing = w1.close();
  const t0 = Date.now();
  const second = store.writer(ctx, 'closing-ref', { size: 0, digest: '' });
  setTimeout(open, 1500); // ten tries sleep at most 511 ms in all
  const w2 = await second;
  closeGate = undefined;
  await closing;
  assert.ok(Date.now() - t0 >= 1400, 'the second writer waited for the close');
  assert.equal(w2.status().offset, 5, 'it resumes the ingest the first wrote');
  await w2.close();
});
