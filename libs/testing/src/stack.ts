// One helper for integration tests: a whole flotilla stack (nats-server, PostgreSQL and
// the eight built apps) in a temporary FLOTILLA_HOME, driven with the real ctr.
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Supervisor, cleanupTasks, startNats, startPostgres, unmountUnder, type Running, type AppName } from '@flotilla/launcher';
import { ctr, type CtrOptions, type CtrResult } from './ctr.js';

const execFileP = promisify(execFile);
// libs/testing/src -> repository root (tests run from source through tsx).
const ROOT = path.resolve(__dirname, '..', '..', '..');

export interface Stack {
  home: string;
  socket: string;
  env: NodeJS.ProcessEnv;
  supervisor: Supervisor;
  ctr(args: string[], opts?: CtrOptions): Promise<CtrResult>;
  stop(): Promise<void>;
}

async function waitReady(socket: string, timeoutMs = 60_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const ok = await execFileP('ctr', ['--address', socket, '--connect-timeout', '1s', 'version'], { timeout: 5000 }).then(() => true, () => false);
    if (ok) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`flotilla at ${socket} not ready after ${timeoutMs} ms`);
}

/**
 * Starts a stack from dist/ (run `npm run build` first; npm test does). Waits until the
 * gateway answers ctr and every service is registered. PostgreSQL runs without fsync
 * unless `durable` (tests do not need to survive a power cut; the benchmark compares
 * with containerd's bolt, which syncs each transaction, so it runs durable as `npm start`).
 */
export async function startStack(opts: { nodeId?: string; apps?: readonly AppName[]; env?: NodeJS.ProcessEnv; durable?: boolean } = {}): Promise<Stack> {
  const home = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-test-'));
  // mkdtemp makes 0700; PostgreSQL runs as its own user and must reach its directories.
  await fs.chmod(home, 0o755);
  const socket = path.join(home, 'containerd.sock');
  const started: Running[] = [];
  let supervisor: Supervisor | undefined;
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      await supervisor?.stop();
      await cleanupTasks(path.join(home, 'state', 'node-agent'), socket);
      for (const r of started.reverse()) await r.stop().catch(() => {});
      await unmountUnder(home);
      await fs.rm(home, { recursive: true, force: true });
    })());
  try {
    const nats = await startNats({ dir: path.join(home, 'state', 'nats') });
    started.push(nats);
    const pg = await startPostgres({ dataDir: path.join(home, 'state', 'postgres', 'data'), socketDir: path.join(home, 'run', 'postgres'), durable: opts.durable ?? false });
    started.push(pg);
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      FLOTILLA_HOME: home,
      FLOTILLA_NODE_ID: opts.nodeId ?? 'test-node',
      NATS_URL: nats.url,
      DATABASE_URL: pg.url,
      ...opts.env,
    };
    const sup = new Supervisor({ distDir: path.join(ROOT, 'dist', 'apps'), logDir: path.join(home, 'logs'), env, apps: opts.apps });
    supervisor = sup;
    await sup.start();
    await waitReady(socket);
    // The gateway can be up before the services: wait until each answers a call.
    await waitServices(socket);
    return { home, socket, env, supervisor: sup, ctr: (args, o) => ctr(socket, args, o), stop };
  } catch (err) {
    const logs = await fs.readdir(path.join(home, 'logs')).catch(() => [] as string[]);
    for (const l of logs) process.stderr.write(`--- ${l}\n${await fs.readFile(path.join(home, 'logs', l), 'utf8').catch(() => '')}`);
    await stop();
    throw err;
  }
}

/** Waits until content, images, containers, snapshots and tasks all answer. */
export async function waitServices(socket: string, timeoutMs = 30_000): Promise<void> {
  const checks = [['content', 'ls'], ['images', 'ls'], ['containers', 'ls'], ['snapshots', 'ls'], ['tasks', 'ls'], ['leases', 'ls']];
  const until = Date.now() + timeoutMs;
  for (const c of checks) {
    for (;;) {
      const r = await ctr(socket, c);
      if (r.code === 0) break;
      if (Date.now() > until) throw new Error(`ctr ${c.join(' ')} kept failing: ${r.stderr}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  }
}
