// @flotilla/runtime: the node agent's shim manager for containerd-shim-runc-v2.
export { ShimManager } from './shim.js';
export type { ShimManagerOptions, CreateOptions, ShimEvent } from './shim.js';
