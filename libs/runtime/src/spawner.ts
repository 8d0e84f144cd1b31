// Starts short-lived programs (`containerd-shim-runc-v2 start|delete`, mkfifo) through one
// long-lived /bin/sh instead of child_process.spawn. Node forks the whole agent to spawn,
// copying its page tables and holding its event loop until the child has exec'd (10-20 ms
// per shim start on a small VM); the shell is a few hundred KiB, so its fork costs well
// under a millisecond and the agent's loop only writes one line to a pipe.
//
// Protocol: for request N the agent writes one line the shell evaluates; it starts the
// program in the background (cwd, extra environment, stdin from a file or /dev/null,
// stdout and stderr to files) and answers `p N <pid>` when started and `x N <status>` when it
// exited. The files live in `dir` and are removed once read.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { accessSync, constants as fsc, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';

export interface RunOptions {
  cwd?: string;
  /** Added to the environment the agent had when the shell started. */
  env?: Record<string, string>;
  /** Written to the program's stdin; empty stdin (EOF) when not given. */
  stdin?: Uint8Array;
  /** Killed with SIGKILL after this long. */
  timeoutMs: number;
}

export interface RunResult {
  /** Exit status; for a program killed by signal S, 128 + S (as the shell reports it). */
  code: number | null;
  stdout: Buffer;
  stderr: string;
  /** The program could not be started (ENOENT: no such binary). */
  error?: NodeJS.ErrnoException;
}

interface Pending {
  bin: string;
  pid?: number;
  /** Its timeout passed before its pid was known: killed as soon as it is. */
  expired?: boolean;
  timer: NodeJS.Timeout;
  files: { in?: string; out: string; err: string };
  resolve: (r: RunResult) => void;
}

// Each line is read by `read -r`; eval then runs it. Background jobs are reaped by the shell.
const LOOP = 'while IFS= read -r line; do eval "$line"; done';

/** Single-quoted for sh; `'` becomes `'\''`. */
export function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
let instances = 0;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function kill(pid: number | undefined): void {
  if (!pid) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // exited meanwhile
  }
}

export class Spawner {
  private sh?: ChildProcessByStdio<Writable, Readable, null>;
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private partial = '';
  /** This instance's files: <dir>/<pid>-<n>, so managers sharing `dir` never meet. */
  private own?: string;
  /** Binaries found on PATH, by name (containerd's shim binary lookup caches the same way). */
  private readonly found = new Map<string, string>();

  constructor(private readonly dir: string) {}

  /** Absolute path of `file` (as is when it has a slash), or undefined when PATH has none. */
  lookPath(file: string): string | undefined {
    if (file.includes('/')) return file;
    const hit = this.found.get(file);
    if (hit) return hit;
    for (const d of (process.env.PATH ?? '').split(':')) {
      const p = path.join(d || '.', file);
      try {
        accessSync(p, fsc.X_OK);
        if (!path.isAbsolute(p)) continue;
        this.found.set(file, p);
        return p;
      } catch {
        // not here
      }
    }
    return undefined;
  }

  /** Runs `file` with `args` and resolves when it exits; never rejects. */
  run(file: string, args: string[], o: RunOptions): Promise<RunResult> {
    const bin = this.lookPath(file);
    if (!bin) return Promise.resolve({ code: null, stdout: Buffer.alloc(0), stderr: '', error: enoent(file) });
    if ([bin, ...args, o.cwd ?? '', ...Object.values(o.env ?? {})].some((s) => s.includes('\n') || s.includes('\0')) || Object.keys(o.env ?? {}).some((k) => !ENV_NAME.test(k))) {
      return this.direct(bin, args, o);
    }
    const sh = this.shell();
    if (!sh) return this.direct(bin, args, o);
    const n = ++this.seq;
    const base = path.join(this.own!, String(n));
    const files = { in: o.stdin?.length ? `${base}.in` : undefined, out: `${base}.out`, err: `${base}.err` };
    try {
      if (files.in) writeFileSync(files.in, o.stdin!, { mode: 0o600 });
    } catch {
      return this.direct(bin, args, o);
    }
    const vars = Object.entries(o.env ?? {}).map(([k, v]) => `${k}=${shQuote(v)}`);
    const env = vars.length ? `export ${vars.join(' ')} && ` : '';
    const cd = o.cwd ? `cd ${shQuote(o.cwd)} && ` : '';
    const redirect = `<${files.in ? shQuote(files.in) : '/dev/null'} >${shQuote(files.out)} 2>${shQuote(files.err)}`;
    const line = `{ ( ${cd}${env}exec ${[bin, ...args].map(shQuote).join(' ')} ) ${redirect} & echo "p ${n} $!"; wait $!; echo "x ${n} $?"; } &\n`;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const p = this.pending.get(n);
        if (!p) return;
        p.expired = true;
        kill(p.pid);
      }, o.timeoutMs);
      this.pending.set(n, { bin, timer, files, resolve });
      this.hold();
      sh.stdin.write(line);
    });
  }

  /** Ends the shell; programs it started run on, and their answers are no longer awaited. */
  close(): void {
    const sh = this.sh;
    this.sh = undefined;
    sh?.stdin.end();
    this.fail('spawner closed');
  }

  /** Keeps the event loop alive while answers are owed, and only then. */
  private hold(): void {
    const out = this.sh?.stdout as unknown as { ref?: () => void; unref?: () => void } | undefined;
    if (this.pending.size) out?.ref?.();
    else out?.unref?.();
  }

  private shell(): ChildProcessByStdio<Writable, Readable, null> | undefined {
    if (this.sh) return this.sh;
    try {
      if (!this.own) {
        mkdirSync(this.dir, { recursive: true, mode: 0o700 });
        // Directories left by processes that died with answers owed: only names of our own
        // shape (`<pid>-<n>`), so a directory given by mistake (/tmp, say) loses nothing else.
        for (const e of readdirSync(this.dir)) {
          const m = /^(\d+)-\d+$/.exec(e);
          if (m && !alive(Number(m[1]))) rmSync(path.join(this.dir, e), { recursive: true, force: true });
        }
        const own = path.join(this.dir, `${process.pid}-${++instances}`);
        mkdirSync(own, { mode: 0o700 });
        this.own = own;
      }
      // Its own session, as detached children of the agent had: signals to the agent's
      // process group do not reach the programs it starts.
      const sh = spawn('/bin/sh', ['-c', LOOP], { stdio: ['pipe', 'pipe', 'ignore'], detached: true });
      // The shell holds the agent's life only while it owes answers (see hold()): close()
      // or the agent's exit ends it.
      sh.unref();
      (sh.stdin as unknown as { unref?: () => void }).unref?.();
      (sh.stdout as unknown as { unref?: () => void }).unref?.();
      sh.stdin.on('error', () => {});
      sh.stdout.setEncoding('utf8');
      sh.stdout.on('data', (d: string) => this.onData(d));
      const gone = () => {
        if (this.sh !== sh) return;
        this.sh = undefined;
        this.fail('spawner shell exited');
      };
      sh.on('exit', gone);
      sh.on('error', gone);
      this.sh = sh;
      return sh;
    } catch {
      return undefined;
    }
  }

  private onData(d: string): void {
    const lines = (this.partial + d).split('\n');
    this.partial = lines.pop() ?? '';
    for (const l of lines) {
      const [kind, ns, v] = l.split(' ');
      const n = Number(ns);
      const p = this.pending.get(n);
      if (!p) continue;
      if (kind === 'p') {
        p.pid = Number(v);
        if (p.expired) kill(p.pid);
      }
      else if (kind === 'x') {
        this.pending.delete(n);
        this.hold();
        clearTimeout(p.timer);
        const r = this.collect(p, Number(v));
        // The binary went away since it was looked up: the shell's "not found" (127).
        if (r.code === 127 && !existsSync(p.bin)) {
          for (const [k, b] of this.found) if (b === p.bin) this.found.delete(k);
          r.code = null;
          r.error = enoent(p.bin);
        }
        p.resolve(r);
      }
    }
  }

  private collect(p: Pending, code: number): RunResult {
    const read = (f: string) => {
      try {
        return readFileSync(f);
      } catch {
        return Buffer.alloc(0);
      }
    };
    const stdout = read(p.files.out);
    const stderr = read(p.files.err).toString();
    for (const f of [p.files.in, p.files.out, p.files.err]) if (f) rmSync(f, { force: true });
    return { code, stdout, stderr };
  }

  /**
   * Every request still waiting fails: the shell is gone, its answers with it. Their
   * programs are killed, as a spawned child is at its timeout: nobody would read their
   * answer (a shim start's address) any more.
   */
  private fail(why: string): void {
    for (const [n, p] of this.pending) {
      this.pending.delete(n);
      clearTimeout(p.timer);
      kill(p.pid);
      const r = this.collect(p, -1);
      p.resolve({ ...r, code: null, error: Object.assign(new Error(why), { code: 'ECHILD' }) });
    }
  }

  /** child_process.spawn, for what the shell cannot carry (a newline in an argument). */
  private direct(bin: string, args: string[], o: RunOptions): Promise<RunResult> {
    return new Promise((resolve) => {
      const child = spawn(bin, args, { cwd: o.cwd, env: { ...process.env, ...o.env }, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
      const stdout: Buffer[] = [];
      let stderr = '';
      let settled = false;
      const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs);
      child.stdout.on('data', (d: Buffer) => stdout.push(d));
      child.stderr.on('data', (d) => (stderr += d));
      child.stdin.on('error', () => {}); // it may exit without reading its stdin
      child.on('error', (err: NodeJS.ErrnoException) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ code: null, stdout: Buffer.alloc(0), stderr: '', error: err });
      });
      child.on('close', (code, signal) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ code: code ?? (signal ? 128 + (osSignal(signal) ?? 0) : null), stdout: Buffer.concat(stdout), stderr });
      });
      child.stdin.end(o.stdin ? Buffer.from(o.stdin) : undefined);
    });
  }
}

function osSignal(name: NodeJS.Signals): number | undefined {
  return os.constants.signals[name];
}

function enoent(file: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`spawn ${file} ENOENT`), { code: 'ENOENT', path: file });
}
