// @flotilla/archive: safe application of OCI layer tars onto a directory (containerd's
// archive.Apply, as the diff service's Apply drives it).

// applyLayer(root, blob, { mediaType, whiteouts, maxUncompressedBytes?, parents? })
//   -> { size, diffID } of the uncompressed tar.
export { applyLayer, DEFAULT_MAX_UNCOMPRESSED_BYTES } from './apply.js';
export type { ApplyOptions, ApplyResult } from './apply.js';
// Media types applyLayer accepts, and the decompression it applies.
export { isLayerMediaType, decompressLayer } from './compression.js';
// continuity's fs.RootPath: symlink-following resolution that never leaves a root.
export { rootPath } from './resolve.js';
// computeDiff(lower, upper, out, { compression? }) -> { diffID, size, digest, compressedSize }:
// the layer tar from a lower tree (a directory, or overlay lower layers) to an upper one.
export { computeDiff } from './diff.js';
export type { DiffOptions, DiffResult } from './diff.js';
