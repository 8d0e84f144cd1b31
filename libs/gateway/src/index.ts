// @flotilla/gateway: containerd's gRPC API on a unix socket, forwarded over NATS.
export { Gateway, STREAM_WINDOW, CONNECTION_WINDOW } from './server.js';
export type { GatewayOptions } from './server.js';
export { routeFor } from './routes.js';
export { MAX_EVENT_BACKLOG } from './events.js';
export type { Route } from './routes.js';
