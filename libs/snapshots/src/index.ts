// @flotilla/snapshots: containerd's overlayfs and native snapshotters (records in
// PostgreSQL, data on the node) and the Snapshots and Diff services over them.
export { Snapshotter, Kind, SNAPSHOTTERS, snapshotMigrations, diskUsage } from './snapshotter.js';
export type { SnapshotInfo, SnapshotMount, SnapshotterName } from './snapshotter.js';
export { SnapshotService, DiffService } from './service.js';
export type { SnapshotPublisher } from './service.js';
