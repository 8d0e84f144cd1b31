// @flotilla/images: containerd's image records in PostgreSQL.
export { ImageStore, imageMigrations } from './store.js';
export type { ImagePublisher } from './store.js';
