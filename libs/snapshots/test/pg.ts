// A throwaway PostgreSQL 15 for this lib's tests: initdb as the `postgres` OS user into a
// temp dir, a server on a unix socket only (no TCP), stopped and deleted by stop().
// (A shared @flotilla/testing helper may replace this one.)
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import postgres from 'postgres';

const execFileP = promisify(execFile);
const PG_BIN = '/usr/lib/postgresql/15/bin';

export interface TestPg {
  /** A Postgres.js pool connected over the socket to database `postgres`. */
  sql: postgres.Sql<{}>;
  host: string;
  port: number;
  stop(): Promise<void>;
}

/** As root, the postgres OS user's ids (initdb and postgres refuse to run as root). */
async function postgresIds(): Promise<{ uid: number; gid: number } | {}> {
  if (process.getuid?.() !== 0) return {};
  const id = async (flag: string) => Number((await execFileP('id', [flag, 'postgres'])).stdout.trim());
  return { uid: await id('-u'), gid: await id('-g') };
}

export async function startPg(): Promise<TestPg> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-snapshots-pg-'));
  const data = path.join(dir, 'data');
  const sock = path.join(dir, 'sock');
  await fs.mkdir(sock);
  const ids = await postgresIds();
  if ('uid' in ids) {
    await fs.chown(dir, ids.uid, ids.gid);
    await fs.chown(sock, ids.uid, ids.gid);
  }
  let child: ChildProcess | undefined;
  try {
    await execFileP(`${PG_BIN}/initdb`, ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync'], { cwd: '/', ...ids });
    // A port number only names the socket file; the socket dir is ours alone, so any will do.
    const port = 20000 + Math.floor(Math.random() * 20000);
    const args = ['-D', data, '-k', sock, '-c', 'listen_addresses=', '-p', String(port), '-c', 'fsync=off', '-c', 'full_page_writes=off', '-c', 'synchronous_commit=off'];
    let log = '';
    child = spawn(`${PG_BIN}/postgres`, args, { cwd: '/', stdio: ['ignore', 'pipe', 'pipe'], ...ids });
    child.stdout!.on('data', (d) => (log += d));
    child.stderr!.on('data', (d) => (log += d));
    const exited = new Promise<never>((_, reject) => child!.once('exit', (code) => reject(new Error(`postgres exited (${code}):\n${log}`))));
    exited.catch(() => {});
    // Ready when the socket accepts a query.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const probe = postgres({ host: sock, port, user: 'postgres', database: 'postgres', max: 1, onnotice: () => {}, connect_timeout: 2 });
      try {
        await Promise.race([probe`SELECT 1`, exited]);
        await probe.end();
        break;
      } catch (err) {
        await probe.end({ timeout: 0 }).catch(() => {});
        if (child.exitCode !== null || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const sql = postgres({ host: sock, port, user: 'postgres', database: 'postgres', max: 8, onnotice: () => {} });
    const proc = child;
    return {
      sql,
      host: sock,
      port,
      stop: async () => {
        await sql.end({ timeout: 5 });
        const gone = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGINT'); // fast shutdown
        await gone;
        await fs.rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    child?.kill('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
    throw err;
  }
}
