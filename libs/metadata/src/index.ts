// @flotilla/metadata: namespaces, containers and leases in PostgreSQL.
export { MetadataStore, metadataMigrations } from './store.js';
export type { Publisher } from './store.js';
export { applyMapPaths, refuseFields } from './fieldpaths.js';
