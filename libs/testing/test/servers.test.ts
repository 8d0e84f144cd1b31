// The server helpers against the real programs: nats-server and PostgreSQL 15.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import { promisify } from 'node:util';
import { connect, StringCodec } from 'nats';
import postgres from 'postgres';
import { startNats, startPostgres } from '@flotilla/testing';

const execFileP = promisify(execFile);

test('startNats: a client connects and round-trips a request; stop frees the server', async () => {
  const a = await startNats();
  const b = await startNats();
  assert.notEqual(a.port, b.port);
  assert.equal(a.url, `nats://127.0.0.1:${a.port}`);
  const nc = await connect({ servers: a.url });
  const sc = StringCodec();
  nc.subscribe('ping', { callback: (_err, m) => m.respond(sc.encode(`pong ${sc.decode(m.data)}`)) });
  const reply = await nc.request('ping', sc.encode('1'), { timeout: 2000 });
  assert.equal(sc.decode(reply.data), 'pong 1');
  await nc.close();
  await a.stop();
  await b.stop();
  await assert.rejects(connect({ servers: a.url, reconnect: false, timeout: 1000 }));
});

test('startPostgres: options work with Postgres.js, the URL with psql; database flotilla exists', async () => {
  const pg = await startPostgres();
  try {
    assert.equal(pg.database, 'flotilla');
    assert.equal(pg.options.path, `${pg.host}/.s.PGSQL.${pg.port}`);
    await fs.stat(pg.options.path);
    const sql = postgres({ ...pg.options, onnotice: () => {} });
    try {
      const [row] = await sql`SELECT current_database() AS db, current_user AS who, current_setting('fsync') AS fsync`;
      assert.deepEqual({ ...row }, { db: 'flotilla', who: 'postgres', fsync: 'off' });
      await sql`CREATE TABLE t (k text PRIMARY KEY)`;
      await sql`INSERT INTO t VALUES ('a')`;
      const err = await sql`INSERT INTO t VALUES ('a')`.catch((e) => e);
      assert.equal(err.code, '23505');
    } finally {
      await sql.end({ timeout: 5 });
    }
    const { stdout } = await execFileP('psql', [pg.url, '-Atc', 'SELECT count(*) FROM t']);
    assert.equal(stdout.trim(), '1');
    // No TCP listener: only the socket.
    const { stdout: listen } = await execFileP('psql', [pg.url, '-Atc', 'SHOW listen_addresses']);
    assert.equal(listen.trim(), '');
  } finally {
    await pg.stop();
  }
  await assert.rejects(fs.stat(pg.host), { code: 'ENOENT' });
});
