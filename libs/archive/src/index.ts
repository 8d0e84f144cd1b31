// @flotilla/archive: safe application of OCI layer tars (containerd's archive.Apply).
export { applyLayer } from './apply.js';
export type { ApplyOptions, ApplyResult } from './apply.js';
export { rootPath } from './resolve.js';
