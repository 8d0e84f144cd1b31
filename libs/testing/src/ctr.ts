// The real ctr (Debian's containerd 1.6.20 client), run against a socket.
import { spawn } from 'node:child_process';

export interface CtrResult {
  code: number;
  stdout: string;
  /** stdout as bytes, for binary output (ctr content get). */
  stdoutBytes: Buffer;
  stderr: string;
}

export interface CtrOptions {
  /** `--namespace`; ctr's default (`default`) when unset. */
  namespace?: string;
  /** Written to ctr's stdin, which is then closed. */
  input?: string | Uint8Array;
  /** SIGKILL after this long (default 60 s); the result then has code 137. */
  timeoutMs?: number;
}

/** Runs `ctr --address <socket> [--namespace ns] ...args`; never throws on a non-zero exit. */
export function ctr(socket: string, args: string[], opts: CtrOptions = {}): Promise<CtrResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('ctr', ['--address', socket, ...(opts.namespace ? ['--namespace', opts.namespace] : []), ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(t);
      const stdoutBytes = Buffer.concat(out);
      resolve({ code: code ?? (signal === 'SIGKILL' ? 137 : 128), stdout: stdoutBytes.toString('utf8'), stdoutBytes, stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}
