// `npm start` (bundled to dist/tools/launcher.js by tools/build.mjs): nats-server and a
// private PostgreSQL cluster unless NATS_URL / DATABASE_URL are given, the eight apps under a
// supervisor that restarts any that exits, and `ready: <socket>` on stdout once the real
// `ctr` gets an answer. SIGINT/SIGTERM stop the apps, then nats-server and PostgreSQL, and
// remove the socket: nothing it started stays running.
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { appStateDir, loadConfig } from '@flotilla/config';
import { Supervisor, cleanupTasks, startNats, startPostgres, unmountUnder, type Running } from '@flotilla/launcher';

const execFileP = promisify(execFile);
const READY_TIMEOUT_MS = 120_000;

function log(msg: string, fields?: Record<string, unknown>): void {
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), msg, ...fields, source: 'launcher' }) + '\n');
}

async function main(): Promise<void> {
  process.title = 'flotilla-launcher';
  const cfg = loadConfig();
  for (const d of [cfg.stateDir, cfg.runDir, cfg.logDir, path.dirname(cfg.socket)]) await fs.mkdir(d, { recursive: true });
  // Direct-link sockets of a previous run (processes killed with -9 leave theirs behind).
  if (cfg.directDir) await fs.rm(cfg.directDir, { recursive: true, force: true });
  if (cfg.home) await fs.chmod(cfg.home, 0o755).catch(() => {});
  const env: NodeJS.ProcessEnv = { ...process.env, FLOTILLA_NODE_ID: cfg.nodeId };
  if (cfg.home) env.FLOTILLA_HOME = cfg.home;

  // Everything started so far, stopped in reverse order. Children get their own process
  // groups: a terminal's Ctrl-C reaches only this process, which stops them in order.
  const started: Running[] = [];
  let supervisor: Supervisor | undefined;
  let stopping = false;
  // A signal during a server's start waits for that start, so its process is stopped too.
  let starting: Promise<unknown> = Promise.resolve();
  const stop = async (reason: string, status = 0) => {
    if (stopping) return;
    stopping = true;
    log('stopping', { reason });
    await starting.catch(() => {});
    await supervisor?.stop();
    const cleaned = await cleanupTasks(appStateDir(cfg, 'node-agent'), cfg.socket);
    if (cleaned) log('cleaned up tasks', { count: cleaned });
    for (const r of started.reverse()) await r.stop().catch((err) => log('stop failed', { error: String(err) }));
    await unmountUnder(cfg.stateDir);
    await fs.rm(cfg.socket, { force: true });
    log('stopped');
    process.exit(status);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGHUP', () => void stop('SIGHUP'));
  // `npm start` puts npm and sh between the user and this process, and sh does not pass
  // npm's forwarded SIGTERM on: a parent that goes away means stop too.
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) void stop('parent exited');
  }, 500).unref();

  try {
    await startAll();
  } catch (err) {
    log('failed to start', { error: err instanceof Error ? err.stack : String(err) });
    await stop('failed to start', 1);
  }

  async function startAll(): Promise<void> {
    if (!process.env.NATS_URL) {
      const p = startNats({ dir: path.join(cfg.stateDir, 'nats'), detached: true });
      starting = p;
      const nats = await p;
      started.push(nats);
      env.NATS_URL = nats.url;
      log('nats-server started', { url: nats.url, pid: nats.pid });
    }
    if (stopping) return;
    if (!process.env.DATABASE_URL) {
      const p = startPostgres({ dataDir: path.join(cfg.stateDir, 'postgres', 'data'), socketDir: path.join(cfg.runDir, 'postgres'), detached: true });
      starting = p;
      const pg = await p;
      started.push(pg);
      env.DATABASE_URL = pg.url;
      log('postgres started', { url: pg.url, pid: pg.pid });
    }
    if (stopping) return;
    // This file runs as dist/tools/launcher.js; the apps are in dist/apps.
    const distDir = path.resolve(path.dirname(process.argv[1]!), '..', 'apps');
    supervisor = new Supervisor({ distDir, logDir: cfg.logDir, env, log, detached: true });
    await supervisor.start();
    log('apps started', { pids: supervisor.pids(), logDir: cfg.logDir, node: process.version });

    // Ready when the real client gets an answer through the gateway.
    const until = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (stopping) return;
      const ok = await execFileP('ctr', ['--address', cfg.socket, '--connect-timeout', '1s', 'version'], { timeout: 5000 }).then(
        () => true,
        () => false,
      );
      if (ok) break;
      if (Date.now() > until) {
        log(`not ready after ${READY_TIMEOUT_MS / 1000} s; see the app logs`, { logDir: cfg.logDir });
        await stop('not ready', 1);
        return;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    if (!stopping) process.stdout.write(`ready: ${cfg.socket}\n`);
  }
}

main().catch((err) => {
  log('failed', { error: err instanceof Error ? err.stack : String(err) });
  process.exit(1);
});
