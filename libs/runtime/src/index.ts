// @flotilla/runtime: the node agent's shim manager — containerd 1.6's runtime v2 for
// containerd-shim-runc-v2, over @flotilla/ttrpc.

// The shim manager: start/drive/clean up shims, receive their events, reconnect after restarts.
export { ShimManager, DEFAULT_RUNTIME } from './shim.js';
export type { ShimManagerOptions, CreateTaskOptions, ExecOptions, ShimEvent, TaskExitInfo } from './shim.js';
// Bundle helpers (layout on disk), for tools and tests that inspect or clean bundles.
export { bundleAt, deleteBundle, unmountAll } from './bundle.js';
// Runs short-lived programs through one long-lived shell instead of forking the agent.
export { Spawner, shQuote } from './spawner.js';
export type { RunOptions, RunResult } from './spawner.js';
export type { Bundle } from './bundle.js';
// A default Linux OCI spec as containerd's oci.GenerateSpec makes it.
export { defaultSpec, defaultMounts, encodeSpec, OCI_SPEC_VERSION, DEFAULT_PATH_ENV } from './spec.js';
export type { OciSpec, OciMount, DefaultSpecOptions } from './spec.js';
