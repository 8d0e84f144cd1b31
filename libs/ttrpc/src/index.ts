// @flotilla/ttrpc: containerd's ttrpc protocol (client and server) over unix sockets.
export { TtrpcClient } from './client.js';
export type { CallOptions } from './client.js';
export { TtrpcServer } from './server.js';
export type { TtrpcHandler } from './server.js';
export { MAX_MESSAGE } from './wire.js';
