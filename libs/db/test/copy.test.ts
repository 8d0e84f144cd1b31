// selectBinary against a real PostgreSQL: every field kind as its binary bytes, literals that
// survive any quoting, and a connection that stays usable after each copy (Postgres.js 3.4
// could leave its socket paused: porsager/postgres#499).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connectDb, literal, parseCopy, selectBinary, timestamptzMs, type Sql } from '@flotilla/db';
import { startPostgres, type TestPostgres } from '@flotilla/testing';

let pg: TestPostgres;
let sql: Sql;

before(async () => {
  pg = await startPostgres();
  // One connection: a copy that left it unusable makes the next query hang.
  sql = connectDb(pg.url, { max: 1 });
});
after(async () => {
  await sql?.end({ timeout: 5 });
  await pg?.stop();
});

function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms); }),
  ]);
}

test('fields come as their binary representation', async () => {
  const bytes = Buffer.from([0, 1, 2, 0xff, 0x5c, 0x27, 0]);
  const [row, ...rest] = await selectBinary(sql, `SELECT ${literal('é\\x\'y')}::text, '\\x000102ff5c2700'::bytea, NULL::bytea, ''::text,
    '2026-11-29 08:53:37.123456+00'::timestamptz, '1999-12-31 23:59:59.9995+00'::timestamptz, '{"b": "2", "a": "1"}'::jsonb::text`);
  assert.equal(rest.length, 0);
  assert.equal(row!.length, 7);
  assert.equal(row![0]!.toString('utf8'), 'é\\x\'y');
  assert.deepEqual(row![1], bytes);
  assert.equal(row![2], null);
  assert.deepEqual(row![3], Buffer.alloc(0));
  // What Postgres.js's Date gives for the same value: milliseconds, truncated.
  const [d] = await sql`SELECT '2026-11-29 08:53:37.123456+00'::timestamptz AS a, '1999-12-31 23:59:59.9995+00'::timestamptz AS b`;
  assert.equal(timestamptzMs(row![4]!), d!.a.getTime());
  assert.equal(timestamptzMs(row![4]!), Date.UTC(2026, 10, 29, 8, 53, 37, 123));
  assert.equal(timestamptzMs(row![5]!), d!.b.getTime());
  assert.deepEqual(JSON.parse(row![6]!.toString()), { a: '1', b: '2' });
  assert.deepEqual(await selectBinary(sql, 'SELECT 1 WHERE false'), []);
});

test('settings apply to the one copy, not to the connection after it', async () => {
  const q = `SELECT current_setting('enable_sort'), current_setting('enable_bitmapscan')`;
  const [row] = await selectBinary(sql, q, { enable_sort: 'off', enable_bitmapscan: 'off' });
  assert.deepEqual(row!.map((f) => f!.toString()), ['off', 'off']);
  const [after] = await selectBinary(sql, q);
  assert.deepEqual(after!.map((f) => f!.toString()), ['on', 'on']);
  const [r] = await sql`SELECT current_setting('enable_sort') AS s`;
  assert.equal(r!.s, 'on');
  await assert.rejects(selectBinary(sql, 'SELECT 1', { 'enable_sort = off; DROP TABLE x; --': 'on' }), /not a plain name/);
});

test('literals read back unchanged whatever standard_conforming_strings is', async () => {
  const hostile = `a'b\\c''\\\\'); DROP TABLE x; --\n\t"$$`;
  for (const scs of ['on', 'off']) {
    await sql.begin(async (tx) => {
      await tx.unsafe(`SET LOCAL standard_conforming_strings = ${scs}`);
      const [r] = await tx.unsafe(`SELECT ${literal(hostile)} AS v`);
      assert.equal(r!.v, hostile, `standard_conforming_strings ${scs}`);
    });
  }
  assert.throws(() => literal('a\0b'), /NUL/);
});

test('the connection answers after each copy, large or small', async () => {
  // Results of a few to several hundred KiB arrive in one or a few socket reads, with
  // the end of the copy in the same read as a chunk that filled the stream's buffer.
  await sql`CREATE TABLE copy_rows (id int PRIMARY KEY, data bytea NOT NULL)`;
  await sql`INSERT INTO copy_rows SELECT i, decode(repeat(lpad(to_hex(i % 256), 2, '0'), 3000), 'hex') FROM generate_series(1, 200) i`;
  for (let i = 0; i < 60; i++) {
    const n = 1 + ((i * 7) % 200);
    const rows = await within(10_000, `copy ${i}`, selectBinary(sql, `SELECT id, data FROM copy_rows WHERE id <= ${n} ORDER BY id`));
    assert.equal(rows.length, n);
    assert.equal(rows[n - 1]![0]!.readInt32BE(0), n);
    assert.deepEqual(rows[n - 1]![1], Buffer.alloc(3000, n % 256));
    const [r] = await within(10_000, `query after copy ${i}`, sql`SELECT ${i}::int AS i`);
    assert.equal(r!.i, i);
  }
});

test('an error in the copy is thrown and leaves the connection usable', async () => {
  await assert.rejects(within(10_000, 'failing copy', selectBinary(sql, 'SELECT 1/0')), /division by zero/);
  await assert.rejects(within(10_000, 'copy failing midway', selectBinary(sql, `SELECT id, data, 1/(id - 150) FROM copy_rows ORDER BY id`)), /division by zero/);
  const [r] = await within(10_000, 'query after failed copies', sql`SELECT 1 AS one`);
  assert.equal(r!.one, 1);
  assert.throws(() => parseCopy(Buffer.from('not a copy stream at all')), /binary COPY/);
});

test('a stream cut anywhere parses as the whole', () => {
  const i16 = (n: number) => { const b = Buffer.alloc(2); b.writeInt16BE(n); return b; };
  const i32 = (n: number) => { const b = Buffer.alloc(4); b.writeInt32BE(n); return b; };
  const field = (v: Buffer | null) => (v ? Buffer.concat([i32(v.length), v]) : i32(-1));
  const rows = [[Buffer.from('a'), null, Buffer.alloc(0)], [Buffer.from('bé'), Buffer.alloc(300, 7), Buffer.from([0, 0, 0])]];
  const whole = Buffer.concat([
    Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'), i32(0), i32(2), Buffer.from([9, 9]), // an extension to skip
    ...rows.flatMap((r) => [i16(r.length), ...r.map(field)]),
    i16(-1),
  ]);
  assert.deepEqual(parseCopy(whole), rows);
  for (let a = 0; a <= whole.length; a++) {
    const b = Math.min(whole.length, a + 1 + (a % 17));
    assert.deepEqual(parseCopy([whole.subarray(0, a), whole.subarray(a, b), whole.subarray(b)]), rows, `cut at ${a} and ${b}`);
  }
  assert.throws(() => parseCopy(whole.subarray(0, whole.length - 1)), /ends inside a row/);
  assert.throws(() => parseCopy(Buffer.concat([whole, Buffer.from([0])])), /after the trailer/);
});

test('queries made while a copy streams are answered, not refused', async () => {
  // Postgres.js pipelines queries onto a busy connection; one that reaches it between the
  // copy's CopyOutResponse and CopyDone is refused (COPY_IN_PROGRESS). Queries are fired
  // every turn of the event loop for as long as the copy runs.
  await sql`CREATE TABLE IF NOT EXISTS copy_big (id int PRIMARY KEY, data bytea NOT NULL)`;
  await sql`INSERT INTO copy_big SELECT i, decode(repeat('ab', 3000), 'hex') FROM generate_series(1, 3000) i ON CONFLICT DO NOTHING`;
  for (let round = 0; round < 5; round++) {
    let done = false;
    const others: Promise<unknown>[] = [];
    const copy = selectBinary(sql, 'SELECT id, data FROM copy_big ORDER BY id').finally(() => { done = true; });
    while (!done) {
      others.push(sql`SELECT ${others.length}::int AS i`.then(([r]) => r!.i));
      await new Promise((r) => setImmediate(r));
    }
    assert.equal((await copy).length, 3000);
    assert.deepEqual(await within(10_000, 'queries made during the copy', Promise.all(others)), others.map((_, i) => i));
    assert.ok(others.length > 1, 'some queries were made while the copy ran');
  }
});
