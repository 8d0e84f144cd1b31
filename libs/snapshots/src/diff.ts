// containerd's diff service Apply (diff/apply, the "walking" applier) over snapshotter
// mounts: a single overlay mount with an upperdir is applied straight onto that upperdir
// with overlay whiteouts, its lowerdirs lending attributes to implicitly created parents;
// a single writable rbind of a directory (a parentless or native snapshot) is applied
// straight onto its source; anything else is mounted on a temp dir and applied there. The
// last two use plain deletions for whiteouts.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { applyLayer, computeDiff, type ApplyResult, type DiffOptions, type DiffResult } from '@flotilla/archive';
import { errInvalidArgument } from '@flotilla/errdefs';
import { withTempMount } from './mount.js';
import type { Mount } from './snapshotter.js';

export interface ApplyDiffOptions {
  /** Refuse layers that decompress past this many bytes (applyLayer's default otherwise). */
  maxUncompressedBytes?: number;
}

/** The upperdir and lowerdirs of an overlay mount, when it has an upperdir. */
function overlayDirs(m: Mount): { upper: string; lowers: string[] } | undefined {
  let upper = '';
  let lowers: string[] = [];
  for (const o of m.options) {
    if (o.startsWith('upperdir=')) upper = o.slice('upperdir='.length);
    else if (o.startsWith('lowerdir=')) lowers = o.slice('lowerdir='.length).split(':');
  }
  return upper ? { upper, lowers } : undefined;
}

/** Options of a bind mount under which its source and the mounted view are the same tree. */
const PLAIN_RBIND_OPTIONS: ReadonlySet<string> = new Set(['rbind', 'rw']);

/**
 * The source of a writable recursive bind of a directory (absolute, not a symlink), which
 * the apply may write directly: through a temp mount it would write the same files (an
 * rbind shows the submounts as they are below the source). This skips mount(8) and
 * umount(8), whose forks also make the snapshotter's whole heap copy-on-write: each
 * page written after one faults again (~10,000 faults, ~300 ms of CPU per 50 MiB layer).
 * Anything else (read-only, other options, a file, a symlink) keeps the temp mount, with
 * mount(8)'s own errors.
 */
async function rbindDir(m: Mount): Promise<string | undefined> {
  if (m.type !== 'bind' || !m.options.includes('rbind') || !m.options.every((o) => PLAIN_RBIND_OPTIONS.has(o))) return undefined;
  if (!path.isAbsolute(m.source)) return undefined;
  const st = await fs.lstat(m.source).catch(() => undefined);
  return st?.isDirectory() ? m.source : undefined;
}

/**
 * Applies layer blob `layer` (of `mediaType`) onto the tree `mounts` describe; returns the
 * uncompressed tar's size and digest (the descriptor containerd answers with media type
 * application/vnd.oci.image.layer.v1.tar).
 */
export async function applyDiff(mounts: Mount[], layer: Readable, mediaType: string, opts: ApplyDiffOptions = {}): Promise<ApplyResult> {
  if (mounts.length === 0) {
    layer.destroy();
    throw errInvalidArgument('no mounts to apply the diff to');
  }
  const max = opts.maxUncompressedBytes;
  try {
    if (mounts.length === 1 && mounts[0]!.type === 'overlay') {
      const dirs = overlayDirs(mounts[0]!);
      if (dirs) return await applyLayer(dirs.upper, layer, { mediaType, whiteouts: 'overlay', parents: dirs.lowers, maxUncompressedBytes: max });
    }
    const dir = mounts.length === 1 ? await rbindDir(mounts[0]!) : undefined;
    if (dir) return await applyLayer(dir, layer, { mediaType, whiteouts: 'native', maxUncompressedBytes: max });
    return await withTempMount(mounts, (root) => applyLayer(root, layer, { mediaType, whiteouts: 'native', maxUncompressedBytes: max }));
  } catch (err) {
    layer.destroy(); // the source (a content read) is not left half-consumed
    throw err;
  }
}

/**
 * containerd's walking differ Compare: mounts `lower` (may be empty: no parent) and `upper`
 * read-only on temp dirs and writes to `out` the layer tar from one to the other.
 */
export async function compareMounts(lower: Mount[], upper: Mount[], out: Writable, opts: DiffOptions = {}): Promise<DiffResult> {
  const ro = (ms: Mount[]) => ms.map((m) => ({ ...m, options: [...m.options.filter((o) => o !== 'rw'), 'ro'] }));
  return withTempMount(ro(upper), (upperRoot) =>
    lower.length === 0 ? computeDiff('', upperRoot, out, opts) : withTempMount(ro(lower), (lowerRoot) => computeDiff(lowerRoot, upperRoot, out, opts)),
  );
}
