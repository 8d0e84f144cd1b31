// containerd's Go testsuites and our own Go client cases, compiled with Debian's golang-go
// against Debian's containerd 1.6.20 sources. No modules and no network: GOPATH mode over
// tools/gotest (our packages, under src/flotilla/<name>) and /usr/share/gocode (Debian's).
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const ROOT = path.resolve(__dirname, '..', '..', '..');
const GOPATH_OURS = path.join(ROOT, 'tools', 'gotest');
const CACHE = path.join(os.tmpdir(), 'flotilla-gotest');

export function goEnv(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    GO111MODULE: 'off',
    GOPATH: `${GOPATH_OURS}:/usr/share/gocode`,
    GOCACHE: path.join(CACHE, 'gocache'),
    GOFLAGS: '',
    CGO_ENABLED: '0',
  };
}

async function sourceHash(dir: string): Promise<string> {
  const h = createHash('sha256');
  for (const f of (await fs.readdir(dir)).sort()) {
    if (!f.endsWith('.go')) continue;
    h.update(f).update('\0').update(await fs.readFile(path.join(dir, f))).update('\0');
  }
  return h.digest('hex').slice(0, 16);
}

/**
 * Compiles tools/gotest/src/flotilla/<name> with `go test -c` and returns the test binary,
 * cached by a hash of the package's sources (a rebuild takes half a minute).
 */
export async function buildGoTest(name: string): Promise<string> {
  const dir = path.join(GOPATH_OURS, 'src', 'flotilla', name);
  const bin = path.join(CACHE, `${name}-${await sourceHash(dir)}.test`);
  if (await fs.stat(bin).then(() => true, () => false)) return bin;
  await fs.mkdir(CACHE, { recursive: true });
  const tmp = `${bin}.${process.pid}.tmp`;
  await execFileP('go', ['test', '-c', '-o', tmp, `flotilla/${name}`], { cwd: dir, env: goEnv(), maxBuffer: 16 << 20 }).catch((err: { stderr?: string; message: string }) => {
    throw new Error(`go test -c flotilla/${name} failed:\n${err.stderr ?? err.message}`);
  });
  await fs.rename(tmp, bin);
  return bin;
}

export interface GoTestResult {
  code: number;
  /** `go test -v` output: lines `--- PASS: Name`, `--- FAIL: Name`, `--- SKIP: Name`. */
  output: string;
  passed: string[];
  failed: string[];
  skipped: string[];
}

/** Runs a compiled test binary with -test.v; never throws on failing cases. */
export function runGoTest(bin: string, args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 15 * 60_000): Promise<GoTestResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['-test.v', `-test.timeout=${Math.floor(timeoutMs / 1000)}s`, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs + 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(t);
      const grab = (what: string) => [...output.matchAll(new RegExp(`^\\s*--- ${what}: (\\S+)`, 'gm'))].map((m) => m[1]!);
      resolve({ code: code ?? 1, output, passed: grab('PASS'), failed: grab('FAIL'), skipped: grab('SKIP') });
    });
  });
}
