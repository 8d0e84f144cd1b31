// @flotilla/config: environment parsing and the on-disk layout.
export { loadConfig, appStateDir, defaultNodeId, ConfigError } from './config.js';
export type { FlotillaConfig, ContentBackendConfig } from './config.js';
