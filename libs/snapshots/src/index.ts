// @flotilla/snapshots: containerd's overlayfs and native snapshotters for one node
// (records in PostgreSQL, data on the node's disk), the diff service's Apply over their
// mounts, and the Snapshots and Diff services that expose both.

// The snapshotters: new Snapshotter({ sql, nodeId, name, root }), and their tables.
export { Snapshotter, SNAPSHOTTERS, snapshotMigrations } from './snapshotter.js';
export type { Info, Mount, SnapshotKind, SnapshotterName, SnapshotterOptions } from './snapshotter.js';
// Disk usage as containerd counts it (blocks and distinct inodes).
export { diskUsage } from './usage.js';
export type { Usage } from './usage.js';
// Applying a layer onto a snapshot's mounts (containerd's walking differ Apply).
export { applyDiff, compareMounts } from './diff.js';
export type { ApplyDiffOptions } from './diff.js';
// A layer blob as a stream: the content store's file when shared and verified, else a content Read.
export { layerSource } from './blob.js';
export type { LayerContent, LayerSourceOptions } from './blob.js';
// mount(8)-backed helpers for containerd mount lists.
export { mountAll, unmount, withTempMount } from './mount.js';
// The gRPC/NATS-facing services (request/response types from @flotilla/api).
export { SnapshotService, DiffService } from './service.js';
export type { SnapshotPublisher, SnapshotHooks, DiffServiceOptions } from './service.js';
// A content Write session over the bus (the differ's upload).
export { openIngest } from './ingest.js';
export type { Ingest, RequestBus } from './ingest.js';
