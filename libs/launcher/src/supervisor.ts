// Runs flotilla's apps as child processes, restarting any that exits, with each app's
// output appended to <logDir>/<app>.log.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFile, openSync, closeSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';

export const APPS = ['metadata', 'content', 'images', 'events', 'tasks', 'snapshotter', 'node-agent', 'gateway'] as const;
export type AppName = (typeof APPS)[number];

export interface SupervisorOptions {
  /** Directory holding <app>/main.js bundles (dist/apps). */
  distDir: string;
  logDir: string;
  env: NodeJS.ProcessEnv;
  apps?: readonly AppName[];
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  /** Start each app in its own process group (the launcher: a terminal's Ctrl-C reaches only it). */
  detached?: boolean;
}

interface Managed {
  app: AppName;
  child?: ChildProcess;
  /** Restarts so far (never reset; tests and logs read it). */
  restarts: number;
  /** Quick deaths in a row; sets the backoff. */
  streak: number;
  startedAt: number;
  timer?: NodeJS.Timeout;
}

/**
 * Environment per app, under what the launcher was given (a variable already set wins).
 * The snapshotter's Apply works through 256 KiB buffers (gunzip output, blob reads), right at
 * glibc's mmap threshold: memory freed between layers went back to the kernel (munmap,
 * heap trims) and faulted in again on the next import, 16,000-28,000 faults after a quiet
 * spell instead of ~500. These keep such buffers in a heap that is not trimmed below 256 MiB.
 */
export const APP_ENV: Readonly<Partial<Record<AppName, Readonly<Record<string, string>>>>> = {
  snapshotter: { MALLOC_MMAP_THRESHOLD_: String(4 << 20), MALLOC_TRIM_THRESHOLD_: String(256 << 20), MALLOC_TOP_PAD_: String(64 << 20) },
};

const MIN_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 5_000;
/** A run at least this long counts as healthy: the next death restarts with the shortest backoff. */
const HEALTHY_RUN_MS = 10_000;

export class Supervisor {
  private readonly managed = new Map<AppName, Managed>();
  private stopping = false;

  constructor(private readonly opts: SupervisorOptions) {}

  async start(): Promise<void> {
    await fs.mkdir(this.opts.logDir, { recursive: true });
    for (const app of this.opts.apps ?? APPS) {
      const m: Managed = { app, restarts: 0, streak: 0, startedAt: 0 };
      this.managed.set(app, m);
      this.spawn(m);
    }
  }

  private spawn(m: Managed): void {
    if (this.stopping) return;
    const logPath = path.join(this.opts.logDir, `${m.app}.log`);
    let log: number;
    try {
      log = openSync(logPath, 'a');
    } catch (err) {
      // The log directory went away: keep the app running, its output is lost.
      this.opts.log?.('cannot open app log', { app: m.app, logPath, error: String(err) });
      log = openSync('/dev/null', 'a');
    }
    // Source maps only when asked for (README, FLOTILLA_SOURCE_MAPS): the first stack trace
    // formatted decodes the bundle's whole map into ~20 MB of arrays that every major
    // collection then marks.
    const env = { ...APP_ENV[m.app], ...this.opts.env };
    const child = spawn(process.execPath, [...(env.FLOTILLA_SOURCE_MAPS === '1' ? ['--enable-source-maps'] : []), path.join(this.opts.distDir, m.app, 'main.js')], {
      env,
      stdio: ['ignore', log, log],
      detached: this.opts.detached ?? false,
    });
    closeSync(log);
    m.child = child;
    m.startedAt = Date.now();
    child.once('exit', (code, signal) => {
      if (this.stopping) return;
      m.streak = Date.now() - m.startedAt >= HEALTHY_RUN_MS ? 0 : m.streak + 1;
      const delay = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** Math.min(m.streak, 6));
      m.restarts++;
      const fields = { app: m.app, code, signal, restarts: m.restarts, delayMs: delay };
      this.opts.log?.('app exited; restarting', fields);
      appendFile(logPath, JSON.stringify({ time: new Date().toISOString(), source: 'supervisor', msg: 'exited; restarting', ...fields }) + '\n', () => {});
      m.timer = setTimeout(() => this.spawn(m), delay);
    });
  }

  pids(): Partial<Record<AppName, number>> {
    const out: Partial<Record<AppName, number>> = {};
    for (const [app, m] of this.managed) if (m.child?.pid && m.child.exitCode === null) out[app] = m.child.pid;
    return out;
  }

  restarts(app: AppName): number {
    return this.managed.get(app)?.restarts ?? 0;
  }

  /** SIGTERM every app, SIGKILL what is still there after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    await Promise.all(
      [...this.managed.values()].map((m) => {
        clearTimeout(m.timer);
        const c = m.child;
        if (!c || c.exitCode !== null || c.signalCode !== null) return undefined;
        return new Promise<void>((resolve) => {
          const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
          c.once('exit', () => {
            clearTimeout(t);
            resolve();
          });
          c.kill('SIGTERM');
        });
      }),
    );
  }
}
