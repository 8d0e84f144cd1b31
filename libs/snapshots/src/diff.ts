// containerd's diff service Apply (diff/apply, the "walking" applier) over snapshotter
// mounts: a single overlay mount with an upperdir is applied straight onto that upperdir
// with overlay whiteouts, its lowerdirs lending attributes to implicitly created parents;
// anything else (a bind of a parentless or native snapshot) is mounted on a temp dir and
// applied there with plain deletions for whiteouts.
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
