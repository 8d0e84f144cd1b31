// Tearing down what a stack's node agent left: on an orderly stop of the whole stack,
// each remaining task is cleaned up the way containerd cleans up after a dead shim
// (`<shim> ... delete` kills the container and unmounts its rootfs), then the shim goes.
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/**
 * Deletes every task whose bundle is under `agentStateDir` (<ns>/<id>) with its shim's
 * `delete` command, unmounts and removes the bundle, then kills every shim still serving
 * `grpcAddress` (shims of this stack only: each stack has its own socket). Returns how many
 * bundles were cleaned up.
 */
export async function cleanupTasks(agentStateDir: string, grpcAddress: string): Promise<number> {
  let n = 0;
  for (const ns of await fs.readdir(agentStateDir).catch(() => [] as string[])) {
    // Dot entries are the agent's own (its FIFO pool), never a namespace.
    if (ns.startsWith('.')) continue;
    for (const id of await fs.readdir(path.join(agentStateDir, ns)).catch(() => [] as string[])) {
      const bundle = path.join(agentStateDir, ns, id);
      const binary = (await fs.readFile(path.join(bundle, 'shim-binary-path'), 'utf8').catch(() => '')).trim() || 'containerd-shim-runc-v2';
      await execFileP(binary, ['-namespace', ns, '-address', grpcAddress, '-publish-binary', '/bin/false', '-id', id, '-bundle', bundle, 'delete'], {
        cwd: bundle,
        timeout: 15_000,
      }).catch(() => {});
      await execFileP('umount', ['-l', path.join(bundle, 'rootfs')]).catch(() => {});
      await fs.rm(bundle, { recursive: true, force: true });
      n++;
    }
  }
  const shims = await shimPids(grpcAddress);
  for (const pid of shims) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  // Return once they are gone (or zombies waiting for init), so callers see them stopped.
  for (const until = Date.now() + 5000; Date.now() < until; await new Promise((r) => setTimeout(r, 50))) {
    const states = await Promise.all(shims.map((pid) => fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')));
    if (states.every((st) => st === '' || st.slice(st.lastIndexOf(')') + 2).startsWith('Z'))) break;
  }
  return n;
}

/** Pids of runtime v2 shims started with `-address <grpcAddress>`, found in /proc. */
export async function shimPids(grpcAddress: string): Promise<number[]> {
  const out: number[] = [];
  for (const e of await fs.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(e)) continue;
    const argv = (await fs.readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (!path.basename(argv[0] ?? '').startsWith('containerd-shim')) continue;
    const i = argv.indexOf('-address');
    if (i > 0 && argv[i + 1] === grpcAddress) out.push(Number(e));
  }
  return out;
}

/** Lazily unmounts anything still mounted under `dir` (deepest first). */
export async function unmountUnder(dir: string): Promise<void> {
  const mounts = (await fs.readFile('/proc/self/mounts', 'utf8')).split('\n').map((l) => l.split(' ')[1] ?? '').map((p) => p.replace(/\\040/g, ' '));
  const prefix = path.resolve(dir) + '/';
  for (const m of mounts.filter((p) => p.startsWith(prefix)).sort((a, b) => b.length - a.length)) {
    await execFileP('umount', ['-l', m]).catch(() => {});
  }
}
