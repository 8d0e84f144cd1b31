// @flotilla/metadata: namespaces, containers and leases in PostgreSQL, and the garbage collector.
export { MetadataStore, metadataMigrations } from './store.js';
export type { Publisher } from './store.js';
export { applyMapPaths, refuseFields } from './fieldpaths.js';
export { asField } from './containers.js';
/** Leases (containerd's leases.Manager). */
export { LeaseStore } from './leases.js';
export type { LeaseHooks, ReleasedResource } from './leases.js';
/** Garbage collection: the collector, its scheduler, the lock writers share with it, its bus endpoint. */
export { GarbageCollector, labelRefs, LABEL_GC_ROOT, LABEL_GC_REF_CONTENT, LABEL_GC_REF_SNAPSHOT, LABEL_GC_EXPIRE, LABEL_GC_FLAT } from './gc.js';
export type { GcRemover, GcStats, CollectorOptions } from './gc.js';
export { GcScheduler } from './gcscheduler.js';
export type { GcSchedulerOptions } from './gcscheduler.js';
export { withGcReadLock, GC_LOCK_NAME } from './gclock.js';
export { requestCollection, decodeCollectRequest, gcCollectSubject } from './gcclient.js';
export type { GcCollectRequest } from './gcclient.js';
