// Mounting containerd mount lists with mount(8): all mounts of a list go onto the same
// target in order (containerd's mount.All), and unmounting is always attempted, lazily
// as a last resort, so a failed apply never leaves a mount behind.
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { errInvalidArgument, errUnknown } from '@flotilla/errdefs';
import type { Mount } from './snapshotter.js';

const execFileP = promisify(execFile);

async function run(cmd: string, args: string[]): Promise<void> {
  try {
    await execFileP(cmd, args);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw errUnknown(`${cmd} ${args.join(' ')}: ${(e.stderr || e.message).trim()}`, { cause: err });
  }
}

/** Mounts every mount of `mounts` onto `target`, in order; undoes what it did on failure. */
export async function mountAll(mounts: Mount[], target: string): Promise<void> {
  if (mounts.length === 0) throw errInvalidArgument('no mounts to mount');
  let done = 0;
  try {
    for (const m of mounts) {
      const opts = m.options.filter((o) => o !== '');
      // mount(8) treats "bind" as the bind flag (and remounts read-only when asked).
      const args = ['-t', m.type || 'none', ...(opts.length ? ['-o', opts.join(',')] : []), '--', m.source || 'none', target];
      await run('mount', args);
      done++;
    }
  } catch (err) {
    for (; done > 0; done--) await unmount(target).catch(() => {});
    throw err;
  }
}

/** Unmounts the top mount at `target`; detaches lazily if it is busy. */
export async function unmount(target: string): Promise<void> {
  try {
    await run('umount', ['--', target]);
  } catch (err) {
    await run('umount', ['-l', '--', target]).catch(() => {
      throw err;
    });
  }
}

/**
 * Mounts `mounts` on a fresh temp dir, runs `fn` on it, and always unmounts and removes the
 * dir afterwards (containerd's mount.WithTempMount).
 */
export async function withTempMount<T>(mounts: Mount[], fn: (root: string) => Promise<T>): Promise<T> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-mount-'));
  try {
    await mountAll(mounts, dir);
    try {
      return await fn(dir);
    } finally {
      for (let i = 0; i < mounts.length; i++) await unmount(dir);
    }
  } finally {
    // rmdir, never rm -r: if an unmount failed, the mounted tree must not be deleted through it.
    await fs.rmdir(dir).catch(() => {});
  }
}
