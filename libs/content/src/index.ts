// @flotilla/content: containerd's content store. A blob Backend (role interfaces after
// containerd's Provider / Ingester; the local disk one here), the namespaced store over
// PostgreSQL (containerd's metadata content store), and the Content API service.

// Backend role interfaces and the local disk backend.
export type { Backend, Provider, Ingester, Deleter, IngestWriter, IngestStatus, BlobStat, Vouched } from './backend.js';
export { DiskBackend } from './disk.js';
// The S3 backend (MinIO or any S3-compatible store).
export { S3Backend } from './s3.js';
export type { S3BackendOptions } from './s3.js';
// The namespaced store: labels, leases, ingest records, the blob lock.
export { ContentStore, contentMigrations, ingestKey, CONTENT_BLOB_LOCK } from './store.js';
export type { ContentStoreOptions, LeaseRecorder, LeaseResource, Info, Status, Descriptor, Writer } from './store.js';
// The containerd Content API over a ContentStore.
export { ContentService } from './service.js';
// go-digest's validation and the sub-millisecond wall clock stamps are made with.
export { digestError } from './digest.js';
export { preciseNow } from '@flotilla/api';
