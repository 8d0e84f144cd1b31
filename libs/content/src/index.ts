// @flotilla/content: containerd's content store — local disk backend, PostgreSQL
// namespace records, and the service implementing containerd's Content API.
export { DiskStore, Ingest, validateDigest } from './disk.js';
export type { IngestStatus } from './disk.js';
export { ContentService, contentMigrations } from './service.js';
export type { ContentHooks } from './service.js';
