// @flotilla/images: containerd's image records in PostgreSQL.
export { ImageStore, imageMigrations, digestError } from './store.js';
export type { ImagePublisher, ImageHooks } from './store.js';
