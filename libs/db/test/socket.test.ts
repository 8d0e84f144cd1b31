// The socket under Postgres.js (socket.ts): the byte stream cut only at message boundaries,
// whatever the reads bring, messages longer than the read buffer gathered whole; and
// against a real PostgreSQL, results large and small through it, and a server that is not
// there refused as with Postgres.js's own socket, the pool still usable afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { connectDb, selectBinary, type Sql } from '@flotilla/db';
import { startPostgres, type TestPostgres } from '@flotilla/testing';
import { MessageCutter } from '../src/socket.js';

/** A backend message: type byte, int32 length counting itself, body. */
function message(type: string, body: Buffer): Buffer {
  const m = Buffer.alloc(5 + body.length);
  m.write(type, 0, 'latin1');
  m.writeUInt32BE(4 + body.length, 1);
  body.copy(m, 5);
  return m;
}

/** Feeds `stream` to a cutter in reads of the given sizes; returns the chunks it handed on. */
function cut(cutter: MessageCutter, stream: Buffer, sizes: (i: number) => number): Buffer[] {
  const out: Buffer[] = [];
  let p = 0;
  for (let i = 0; p < stream.length; i++) {
    const space = cutter.space();
    const n = Math.min(space.length, sizes(i), stream.length - p);
    stream.copy(space, 0, p, p + n);
    p += n;
    const whole = cutter.push(n);
    if (whole) out.push(whole);
  }
  return out;
}

/** The messages a chunk holds, each whole. */
function split(chunk: Buffer): Buffer[] {
  const ms: Buffer[] = [];
  for (let p = 0; p < chunk.length; ) {
    assert.ok(p + 5 <= chunk.length, 'a message header cut');
    const end = p + 1 + chunk.readUInt32BE(p + 1);
    assert.ok(end <= chunk.length, 'a message cut');
    ms.push(chunk.subarray(p, end));
    p = end;
  }
  return ms;
}

test('messages come whole, in order, in memory of their own, whatever the reads', () => {
  const size = 1024;
  // Empty bodies, small ones, and longer than the buffer (gathered, then back to the usual size).
  const lengths = [0, 1, 3, 50, 1019, 1020, 1021, 5000, 0, 2, 70_000, 7, 300];
  const messages = lengths.map((n, i) => message(String.fromCharCode(65 + (i % 26)), randomBytes(n)));
  const stream = Buffer.concat(messages);
  for (const sizes of [() => 1, () => 2, () => 7, (i: number) => 1 + ((i * 131) % 977), () => 1 << 20]) {
    const cutter = new MessageCutter(size);
    const chunks = cut(cutter, stream, sizes);
    assert.deepEqual(chunks.flatMap(split), messages);
    assert.equal(cutter.pending, 0);
    // Handed-on chunks are copies: later reads into the cutter's buffer leave them as they were.
    const before = chunks.map((c) => Buffer.from(c));
    cut(cutter, Buffer.concat(lengths.map((n) => message('Z', Buffer.alloc(n, 0xee)))), () => 100);
    assert.deepEqual(chunks, before);
    assert.ok(cutter.space().length <= size, 'the buffer went back to its usual size');
  }
});

test('a message arriving a byte at a time is handed on once, when whole', () => {
  const cutter = new MessageCutter(16);
  const m = message('D', randomBytes(40));
  for (let i = 0; i < m.length - 1; i++) {
    cutter.space()[0] = m[i]!;
    assert.equal(cutter.push(1), undefined, `byte ${i}`);
  }
  cutter.space()[0] = m[m.length - 1]!;
  assert.deepEqual(cutter.push(1), m);
});

let pg: TestPostgres;
let sql: Sql;

before(async () => {
  pg = await startPostgres();
  sql = connectDb(pg.url, { max: 2 });
});
after(async () => {
  await sql?.end({ timeout: 5 });
  await pg?.stop();
});

test('results of every size come through intact', async () => {
  // Rows and fields shorter and far longer than one read, by query and by binary copy.
  await sql`CREATE TABLE blobs (id int PRIMARY KEY, data bytea NOT NULL)`;
  const sizes = [0, 1, 4000, 300_000, 3_000_000];
  const blobs = sizes.map((n) => randomBytes(n));
  for (let i = 0; i < blobs.length; i++) await sql`INSERT INTO blobs VALUES (${i}, ${blobs[i]!})`;
  const rows = await sql`SELECT id, data FROM blobs ORDER BY id`;
  assert.deepEqual(rows.map((r) => r.data as Buffer), blobs);
  const copied = await selectBinary(sql, 'SELECT data FROM blobs ORDER BY id');
  assert.deepEqual(copied.map((r) => r[0]), blobs);
  const [big] = await sql`SELECT repeat('é', 2000000) AS s`;
  assert.equal(big!.s, 'é'.repeat(2_000_000));
});

test('a server that is not there: each query refused, none left waiting, the pool usable', async () => {
  const dead = connectDb(`postgres://postgres@/postgres?host=${path.join(pg.host, 'no-such-dir')}`, { max: 1 });
  try {
    for (let i = 0; i < 3; i++) await assert.rejects(dead`SELECT 1`, /ENOENT|ECONNREFUSED/, `query ${i}`);
  } finally {
    await dead.end({ timeout: 1 });
  }
});

test('a host:port URL connects through the same socket', async () => {
  // A TCP listener that relays to the server's unix socket (which trusts local users).
  const unix = path.join(pg.host, `.s.PGSQL.${pg.port}`);
  const relay = net.createServer((c) => {
    const u = net.connect(unix);
    c.pipe(u).pipe(c);
    c.on('error', () => u.destroy());
    u.on('error', () => c.destroy());
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  const { port } = relay.address() as net.AddressInfo;
  const db = new URL(pg.url.replace('postgres://postgres@/', 'postgres://postgres@localhost/')).pathname;
  const tcp = connectDb(`postgres://postgres@127.0.0.1:${port}${db}`, { max: 1 });
  try {
    const blob = randomBytes(600_000);
    const [r] = await tcp`SELECT ${blob}::bytea AS b, inet_client_addr() IS NULL AS via_unix`;
    assert.deepEqual(r!.b, blob);
    assert.equal(r!.via_unix, true, 'the relay reached the unix socket');
  } finally {
    await tcp.end({ timeout: 5 });
    relay.close();
  }
});
