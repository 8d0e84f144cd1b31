// Debian's containerd 1.6.20 as a reference to compare flotilla's answers with: started only
// by tests and the benchmark, on a private root, state and socket, with CRI off. flotilla
// itself never runs, calls or proxies to it.
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { stopChild, unmountUnder } from '@flotilla/launcher';
import { ctr, type CtrOptions, type CtrResult } from './ctr.js';

/** Where containerd-shim-runc-v2 keeps runc state unless a container's options say otherwise. */
const RUNC_ROOT = '/run/containerd/runc';

export interface Reference {
  /** The reference daemon's gRPC socket. */
  socket: string;
  /** The real ctr against the reference. */
  ctr(args: string[], opts?: CtrOptions): Promise<CtrResult>;
  /** Deletes every task (SIGKILL), stops the daemon, unmounts and removes its directory. */
  stop(): Promise<void>;
}

export async function startReferenceContainerd(): Promise<Reference> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-ref-'));
  const socket = path.join(dir, 'containerd.sock');
  const config = path.join(dir, 'config.toml');
  const logPath = path.join(dir, 'containerd.log');
  await fs.writeFile(
    config,
    [
      'version = 2',
      `root = "${dir}/root"`,
      `state = "${dir}/state"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = "${socket}"`,
      '[ttrpc]',
      `  address = "${socket}.ttrpc"`,
      '[debug]',
      '  address = ""',
      '[metrics]',
      '  address = ""',
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = "${dir}/opt"`,
      '',
    ].join('\n'),
  );
  const log = openSync(logPath, 'a');
  const child = spawn('containerd', ['--config', config, '--log-level', 'warn'], { stdio: ['ignore', log, log] });
  closeSync(log);
  const fail = async (why: string) => {
    await stopChild(child, 'SIGKILL', 1000);
    const text = await fs.readFile(logPath, 'utf8').catch(() => '');
    await fs.rm(dir, { recursive: true, force: true });
    throw new Error(`reference containerd ${why}:\n${text.slice(-2000)}`);
  };
  const until = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) await fail(`exited (${child.exitCode ?? child.signalCode})`);
    if ((await ctr(socket, ['version'], { timeoutMs: 5000 })).code === 0) break;
    if (Date.now() > until) await fail('did not answer ctr version within 30 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    socket,
    ctr: (args, o) => ctr(socket, args, o),
    stop: async () => {
      // Tasks left by a failed test: force-deleting kills them and stops their shims.
      const nss = child.exitCode === null ? (await ctr(socket, ['namespaces', 'ls', '-q'])).stdout.split('\n').filter(Boolean) : [];
      for (const ns of nss) {
        const ids = (await ctr(socket, ['tasks', 'ls', '-q'], { namespace: ns })).stdout.split('\n').filter(Boolean);
        for (const id of ids) await ctr(socket, ['tasks', 'delete', '--force', id], { namespace: ns, timeoutMs: 15_000 });
      }
      await stopChild(child, 'SIGTERM', 10_000);
      await unmountUnder(dir);
      await fs.rm(dir, { recursive: true, force: true });
      // The runc shim keeps per-namespace state in its default root; drop the empty ones.
      for (const ns of nss) await fs.rmdir(path.join(RUNC_ROOT, ns)).catch(() => {});
    },
  };
}
