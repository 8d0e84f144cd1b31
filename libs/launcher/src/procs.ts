// Starting the servers flotilla depends on (nats-server, a private PostgreSQL cluster) for
// `npm start` and for the tests alike: one implementation, so tests run what users run.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import { openSync, closeSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Where Debian's postgresql-15 puts initdb, postgres and pg_ctl. */
export const PG_BIN = '/usr/lib/postgresql/15/bin';

export interface Running {
  url: string;
  /** Pid of the server process (for tests that check it is gone). */
  pid: number;
  stop(): Promise<void>;
}

export interface RunningNats extends Running {
  port: number;
}

/** Connection details of a socket-only PostgreSQL cluster. */
export interface PostgresOptions {
  /** Directory holding the server's unix socket (libpq's `host`). */
  host: string;
  port: number;
  /** Full path of the socket, `<host>/.s.PGSQL.<port>` (Postgres.js's `path`). */
  path: string;
  database: string;
  username: string;
}

export interface RunningPostgres extends Running {
  /** libpq's socket form, `postgres://postgres@/<db>?host=<dir>&port=<port>`; psql and `connectDb` take it. */
  url: string;
  host: string;
  port: number;
  database: string;
  /** Options for `postgres(options)` (Postgres.js does not read a socket directory from a URL). */
  options: PostgresOptions;
}

/** nats-server's max_payload as flotilla starts it (its largest without a warning). */
export const NATS_MAX_PAYLOAD = 8 * 1024 * 1024;

export interface StartNatsOptions {
  /** Holds nats.log and the ports file; created if missing. */
  dir: string;
  /** Client port; default: one the server picks itself (no race with other starts). */
  port?: number;
  /** Own process group, so a terminal's Ctrl-C reaches only the parent (the launcher stops it in order). */
  detached?: boolean;
}

export interface StartPostgresOptions {
  /** The cluster; initialised on first use, reused after. */
  dataDir: string;
  /** Unix socket directory; the server listens on no TCP address. */
  socketDir: string;
  /** Only names the socket file (no TCP listener): 5432 unless told. */
  port?: number;
  /** Database created if missing; default `flotilla`. */
  database?: string;
  /** false for throwaway test clusters: no fsync, no synchronous commit. */
  durable?: boolean;
  detached?: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on loopback (bound and released: another process may take it first). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor<T>(what: string, check: () => Promise<T | undefined>, child: ChildProcess, logPath: string, timeoutMs: number): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const log = await fs.readFile(logPath, 'utf8').catch(() => '');
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before it was ready; log ${logPath}:\n${log.slice(-2000)}`);
    }
    const v = await check().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > until) {
      child.kill('SIGKILL');
      throw new Error(`${what} was not ready within ${timeoutMs} ms; log ${logPath}`);
    }
    await sleep(50);
  }
}

/** True once a NATS server at host:port greets a new connection with its INFO line. */
function natsGreets(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2000, () => done(false));
    s.once('data', (d) => done(d.toString('latin1').startsWith('INFO ')));
    s.once('error', () => done(false));
  });
}

/** Sends `signal`, then SIGKILL after `graceMs`; resolves once the process has exited. */
export function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill(signal);
  });
}

/**
 * nats-server on a loopback port the server picks (`-p -1`), read back from the ports file
 * it writes; logs to `<dir>/nats.log`. Resolves once the server greets a client.
 */
export async function startNats(opts: StartNatsOptions): Promise<RunningNats> {
  const dir = path.resolve(opts.dir);
  await fs.mkdir(dir, { recursive: true });
  const logPath = path.join(dir, 'nats.log');
  const log = openSync(logPath, 'a');
  // max_payload has no command-line flag: a one-line config file raises it from the 1 MiB
  // default, so a ctr message (1 MiB of content) crosses the bus as one payload.
  const conf = path.join(dir, 'nats.conf');
  await fs.writeFile(conf, `max_payload: ${NATS_MAX_PAYLOAD}\n`);
  const args = ['-c', conf, '-a', '127.0.0.1', '-p', String(opts.port ?? -1), '--ports_file_dir', dir];
  const child = spawn('nats-server', args, { stdio: ['ignore', log, log], detached: opts.detached ?? false });
  closeSync(log);
  if (child.pid === undefined) throw new Error('nats-server could not be started: is it installed (apt-get install nats-server)?');
  const portsFile = path.join(dir, `nats-server_${child.pid}.ports`);
  const port = await waitFor(
    'nats-server',
    async () => {
      const ports = JSON.parse(await fs.readFile(portsFile, 'utf8')) as { nats?: string[] };
      const p = Number(new URL(ports.nats?.[0] ?? '').port);
      return p > 0 && (await natsGreets(p)) ? p : undefined;
    },
    child,
    logPath,
    20_000,
  );
  return { url: `nats://127.0.0.1:${port}`, port, pid: child.pid, stop: () => stopChild(child, 'SIGTERM', 10_000) };
}

/** uid and gid of a local user, from /etc/passwd. */
async function userIds(user: string): Promise<{ uid: number; gid: number }> {
  const line = (await fs.readFile('/etc/passwd', 'utf8')).split('\n').find((l) => l.startsWith(`${user}:`));
  if (!line) throw new Error(`user ${user} does not exist: install PostgreSQL (apt-get install postgresql)`);
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

/**
 * A private PostgreSQL 15 cluster in `dataDir` (created on first use), listening only on a
 * unix socket in `socketDir`. PostgreSQL refuses to run as root, so as root it runs as the
 * `postgres` user, which then must be able to reach both directories (0755 parents).
 */
export async function startPostgres(opts: StartPostgresOptions): Promise<RunningPostgres> {
  const dataDir = path.resolve(opts.dataDir);
  const socketDir = path.resolve(opts.socketDir);
  const port = opts.port ?? 5432;
  const database = opts.database ?? 'flotilla';
  const ids = process.getuid?.() === 0 ? await userIds('postgres') : undefined;
  const run = (cmd: string, args: string[]) => execFileP(cmd, args, { ...(ids ?? {}), cwd: '/' });
  // Parents keep the default mode (a recursive mkdir would give them 0700 too).
  await fs.mkdir(path.dirname(dataDir), { recursive: true });
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
  await fs.mkdir(socketDir, { recursive: true });
  const logPath = path.join(path.dirname(dataDir), `${path.basename(dataDir)}.log`);
  if (ids) {
    for (const d of [dataDir, socketDir]) await fs.chown(d, ids.uid, ids.gid);
    for (const d of [dataDir, socketDir]) {
      for (let p = path.dirname(d); p !== path.dirname(p); p = path.dirname(p)) {
        const st = await fs.stat(p);
        if ((st.mode & 0o001) === 0) throw new Error(`${p} is not searchable by the postgres user (mode ${(st.mode & 0o777).toString(8)}); make it 0755 or set DATABASE_URL`);
      }
    }
  }
  await fs.chmod(dataDir, 0o700);
  const fresh = !(await fs.stat(path.join(dataDir, 'PG_VERSION')).catch(() => undefined));
  if (fresh) {
    await run(`${PG_BIN}/initdb`, ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync']).catch((err) => {
      throw new Error(`initdb ${dataDir} failed: ${err.stderr || err.message}`);
    });
  }
  // The pid file of an earlier server: one still running on this cluster (its launcher was
  // killed) is shut down first; a stale file whose pid now names another process is dropped.
  const pidFile = path.join(dataDir, 'postmaster.pid');
  const oldPid = Number((await fs.readFile(pidFile, 'utf8').catch(() => '')).split('\n')[0]);
  if (oldPid > 0) {
    const argv = (await fs.readFile(`/proc/${oldPid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (path.basename(argv[0] ?? '') === 'postgres' && argv[argv.indexOf('-D') + 1] === dataDir) {
      process.kill(oldPid, 'SIGINT');
      for (const until = Date.now() + 30_000; Date.now() < until && (await fs.stat(`/proc/${oldPid}`).then(() => true, () => false)); ) await sleep(100);
    } else {
      await fs.rm(pidFile, { force: true });
    }
  }

  const args = ['-D', dataDir, '-k', socketDir, '-p', String(port), '-c', 'listen_addresses=', '-c', 'max_connections=200'];
  if (opts.durable === false) args.push('-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off');
  const log = openSync(logPath, 'a');
  if (ids) await fs.chown(logPath, ids.uid, ids.gid);
  const child = spawn(`${PG_BIN}/postgres`, args, { stdio: ['ignore', log, log], cwd: '/', detached: opts.detached ?? false, ...(ids ?? {}) });
  closeSync(log);
  if (child.pid === undefined) throw new Error(`${PG_BIN}/postgres could not be started: apt-get install postgresql`);
  const psql = (sqlText: string, db = 'postgres') => run('/usr/bin/psql', ['-h', socketDir, '-p', String(port), '-U', 'postgres', '-d', db, '-v', 'ON_ERROR_STOP=1', '-Atc', sqlText]);
  try {
    await waitFor('postgres', async () => ((await psql('SELECT 1')).stdout.trim() === '1' ? true : undefined), child, logPath, 60_000);
    const { stdout } = await psql(`SELECT 1 FROM pg_database WHERE datname = '${database.replace(/'/g, "''")}'`);
    if (!stdout.trim()) await psql(`CREATE DATABASE "${database.replace(/"/g, '""')}"`);
  } catch (err) {
    await stopChild(child, 'SIGQUIT', 5000);
    throw err;
  }
  const options: PostgresOptions = { host: socketDir, port, path: path.join(socketDir, `.s.PGSQL.${port}`), database, username: 'postgres' };
  return {
    url: `postgres://postgres@/${encodeURIComponent(database)}?host=${encodeURIComponent(socketDir).replace(/%2F/g, '/')}&port=${port}`,
    host: socketDir,
    port,
    database,
    options,
    pid: child.pid,
    // SIGINT is PostgreSQL's "fast" shutdown: sessions are ended, data is safe.
    stop: () => stopChild(child, 'SIGINT', 30_000),
  };
}
