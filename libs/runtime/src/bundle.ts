// A task's bundle on disk, laid out as containerd 1.6's runtime v2 lays it out, so that
// containerd-shim-runc-v2 finds what it expects and a restarted agent finds its shims:
//
//   <stateDir>/<ns>/<id>/             0700 (0710 + group of the userns root when remapped)
//     config.json                     the OCI spec, 0666
//     rootfs/                         0711; the shim mounts the task's rootfs mounts here
//     work -> <workRoot>/<ns>/<id>    0711 work directory (criu work, shim scratch)
//     log                             FIFO 0700: we create and read it, the shim writes it
//     address                         written by the shim: unix://<its socket>
//     shim-binary-path                written by us: the shim binary, for cleanup after restarts
//     runtime, options.json, init.pid written by the shim
import { execFile } from 'node:child_process';
import {
  type Stats, constants as fsc, chmodSync, chownSync, lstatSync, mkdirSync, openSync, readFileSync, readlinkSync, realpathSync, renameSync, rmSync, rmdirSync, symlinkSync,
  writeFileSync,
} from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { errInvalidArgument } from '@flotilla/errdefs';
import type { Spawner } from './spawner.js';

const execFileP = promisify(execFile);

export interface Bundle {
  namespace: string;
  id: string;
  /** <stateDir>/<ns>/<id>: the shim's cwd and the CreateTaskRequest.bundle. */
  path: string;
}

export function bundleAt(stateDir: string, namespace: string, id: string): Bundle {
  return { namespace, id, path: path.join(stateDir, namespace, id) };
}

/**
 * Creates the bundle directories, the work directory and config.json. An existing bundle
 * directory is an error (EEXIST); the caller decides whether it is stale. Synchronous file
 * system calls, as in deleteBundle: a handful of small ones, cheaper than thread-pool trips.
 */
export async function createBundle(stateDir: string, workRoot: string, namespace: string, id: string, spec: Uint8Array): Promise<Bundle> {
  const b = bundleAt(stateDir, namespace, id);
  const work = path.join(workRoot, namespace, id);
  const created: string[] = [];
  try {
    mkdirSync(path.dirname(b.path), { recursive: true, mode: 0o711 });
    mkdirSync(b.path, { mode: 0o700 });
    created.push(b.path);
    prepareBundlePermissions(b.path, spec);
    mkdirSync(path.dirname(work), { recursive: true, mode: 0o711 });
    mkdirSync(path.join(b.path, 'rootfs'), { mode: 0o711 });
    try {
      mkdirSync(work, { mode: 0o711 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // A work dir with no bundle is a leftover: start it afresh.
      rmSync(work, { recursive: true, force: true });
      mkdirSync(work, { mode: 0o711 });
    }
    created.push(work);
    symlinkSync(work, path.join(b.path, 'work'));
    writeFileSync(path.join(b.path, 'config.json'), spec, { mode: 0o666 });
    return b;
  } catch (err) {
    for (const p of created) {
      try {
        rmSync(p, { recursive: true, force: true });
      } catch {
        // best effort: the caller reports the first error
      }
    }
    throw err;
  }
}

/**
 * With a user namespace whose root maps to host gid G, the bundle must be reachable by G:
 * group G, mode 0710 (containerd's prepareBundleDirectoryPermissions).
 */
function prepareBundlePermissions(dir: string, spec: Uint8Array): void {
  let parsed: { linux?: { gidMappings?: { containerID: number; hostID: number }[] } };
  try {
    parsed = JSON.parse(new TextDecoder().decode(spec));
  } catch (err) {
    throw errInvalidArgument(`invalid OCI spec: ${(err as Error).message}`);
  }
  const root = parsed?.linux?.gidMappings?.find((m) => m.containerID === 0);
  if (!root || !root.hostID) return;
  chownSync(dir, -1, root.hostID);
  chmodSync(dir, 0o710);
}

/**
 * FIFOs made ahead of need in one directory (on the bundles' filesystem, so a rename moves
 * one into a bundle). Node cannot mkfifo(2) itself, and spawning mkfifo for each task put
 * a process start (~10 ms) on every task create; the pool runs one mkfifo for a batch,
 * in the background, and falls back to a direct mkfifo when it is empty.
 */
export class FifoPool {
  private readonly ready: string[] = [];
  private seq = 0;
  private refilling?: Promise<void>;

  /** With a spawner, the batch's mkfifo runs without forking this process. */
  constructor(private readonly dir: string, private readonly batch = 16, private readonly spawner?: Spawner) {}

  /** Empties the directory (FIFOs of an earlier life) and makes the first batch. */
  async start(): Promise<void> {
    await fs.rm(this.dir, { recursive: true, force: true });
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await this.refill();
  }

  /** Puts a new FIFO (mode 0700) at `dest`, which must not exist. */
  async take(dest: string): Promise<void> {
    const src = this.ready.shift();
    if (this.ready.length < this.batch / 4) void this.refill();
    if (src) {
      try {
        renameSync(src, dest);
        return;
      } catch {
        // e.g. the pool directory was removed under us: make one directly.
      }
    }
    await this.mkfifo([dest]);
  }

  private async mkfifo(paths: string[]): Promise<void> {
    const args = ['-m', '0700', ...paths];
    if (!this.spawner) {
      await execFileP('mkfifo', args);
      return;
    }
    const r = await this.spawner.run('mkfifo', args, { timeoutMs: 10_000 });
    if (r.error) throw r.error;
    if (r.code !== 0) throw new Error(`mkfifo: ${r.stderr.trim()}: exit status ${r.code}`);
  }

  private refill(): Promise<void> {
    this.refilling ??= (async () => {
      const names = Array.from({ length: this.batch - this.ready.length }, () => path.join(this.dir, `f${++this.seq}`));
      try {
        if (names.length) await this.mkfifo(names);
        this.ready.push(...names);
      } catch {
        // Best effort: take() falls back to its own mkfifo.
      } finally {
        this.refilling = undefined;
      }
    })();
    return this.refilling;
  }
}

/**
 * Opens the shim's log FIFO for reading, creating it if needed (from `pool` when given).
 * O_RDWR keeps a writer open on our side, so the open never blocks and reading never sees
 * EOF while the shim (the writer) restarts; destroying the returned socket closes the fd.
 */
export async function openShimLog(b: Bundle, pool?: FifoPool): Promise<net.Socket> {
  const fifo = path.join(b.path, 'log');
  let st: Stats | undefined;
  try {
    st = lstatSync(fifo);
  } catch {
    // not there yet
  }
  if (!st) await (pool ? pool.take(fifo) : execFileP('mkfifo', ['-m', '0700', fifo]));
  else if (!st.isFIFO()) throw new Error(`${fifo}: not a fifo`);
  const fd = openSync(fifo, fsc.O_RDWR | fsc.O_NONBLOCK);
  const sock = new net.Socket({ fd, readable: true, writable: false });
  sock.on('error', () => sock.destroy());
  return sock;
}

/** Mount points at or below `dir`, deepest first, from /proc/self/mountinfo. */
function mountsUnder(dir: string): string[] {
  const info = readFileSync('/proc/self/mountinfo', 'utf8');
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: string[] = [];
  for (const line of info.split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const p = unescape(mp);
    if (p === dir || p.startsWith(dir + '/')) out.push(p);
  }
  return out.sort((a, b) => b.length - a.length);
}

/** Unmounts everything at or under `dir` (stacked mounts included), like mount.UnmountAll. */
export async function unmountAll(dir: string): Promise<void> {
  // mountinfo lists resolved paths.
  dir = resolved(dir);
  for (let i = 0; i < 64; i++) {
    const mounts = mountsUnder(dir);
    if (!mounts.length) return;
    for (const m of mounts) await execFileP('umount', [m]).catch(() => {});
  }
  const left = mountsUnder(dir);
  if (left.length) throw new Error(`unmount rootfs ${dir}: still mounted: ${left.join(', ')}`);
}

function resolved(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/**
 * Removes a bundle as containerd's Bundle.Delete does: unmount rootfs first (never recurse
 * through a mounted rootfs), then rename-and-remove the bundle and its work directory.
 */
export async function deleteBundle(bundlePath: string): Promise<void> {
  await (await retireBundle(bundlePath)).deleted;
}

/**
 * The first half of deleteBundle, for a caller that answers before the files are gone:
 * unmounts rootfs and renames the bundle and its work directory to `.<name>` (synchronous
 * calls: a handful, cheaper than thread-pool trips). From then on the id is free for a new
 * bundle and a restarted agent sees only dot entries, which it removes. `deleted` settles
 * when the renamed trees are removed (it rejects if that fails).
 */
export async function retireBundle(bundlePath: string): Promise<{ deleted: Promise<void> }> {
  let work: string | undefined;
  try {
    work = readlinkSync(path.join(bundlePath, 'work'));
  } catch {
    // no work dir recorded
  }
  const rootfs = path.join(bundlePath, 'rootfs');
  await unmountAll(rootfs);
  try {
    rmdirSync(rootfs);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`failed to remove bundle rootfs: ${(err as Error).message}`);
  }
  const hidden: string[] = [];
  for (const p of work ? [bundlePath, work] : [bundlePath]) {
    const h = await hide(p);
    if (h) hidden.push(h);
  }
  return { deleted: Promise.all(hidden.map(removeHidden)).then(() => {}) };
}

/** Removals of renamed trees still running, by path; a rename to the same name waits for its. */
const removing = new Map<string, Promise<void>>();

/**
 * Renames `p` to .<name> so a half-removed directory never looks like a live one (a tree
 * left there by an earlier removal is removed first). Undefined when `p` does not exist.
 */
async function hide(p: string): Promise<string | undefined> {
  const hidden = path.join(path.dirname(p), `.${path.basename(p)}`);
  await removing.get(hidden)?.catch(() => {});
  await removeUnmounted(hidden);
  try {
    renameSync(p, hidden);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return hidden;
}

/**
 * Removes a renamed tree, unmounting anything still mounted below first so removal never
 * reaches into a bind-mounted source. Asynchronous: it may run while the agent serves calls.
 */
function removeHidden(hidden: string): Promise<void> {
  const p = (async () => {
    await unmountAll(hidden);
    await fs.rm(hidden, { recursive: true, force: true });
  })().finally(() => {
    if (removing.get(hidden) === p) removing.delete(hidden);
  });
  removing.set(hidden, p);
  return p;
}

async function removeUnmounted(p: string): Promise<void> {
  try {
    lstatSync(p);
  } catch {
    return;
  }
  await unmountAll(p);
  rmSync(p, { recursive: true, force: true });
}
