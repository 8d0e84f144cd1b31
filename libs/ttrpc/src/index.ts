// @flotilla/ttrpc: containerd's ttrpc protocol over unix sockets — the client the node
// agent uses to drive shims, and the server the shims forward their events to.

// Client: one connection, concurrent unary calls multiplexed by stream id.
export { TtrpcClient, errorFromStatus, isClosed } from './client.js';
export type { CallOptions } from './client.js';
// Server: handlers by service/method; thrown errors become google.rpc.Status.
export { TtrpcServer } from './server.js';
export type { TtrpcHandler, TtrpcContext } from './server.js';
// Wire format, for tests and tools that speak ttrpc by hand.
export {
  MAX_MESSAGE, HEADER_LENGTH, TYPE_REQUEST, TYPE_RESPONSE,
  encodeRequest, decodeRequest, encodeResponse, decodeResponse, frame, FrameReader,
} from './wire.js';
export type { TtrpcRequest, TtrpcResponse, KeyValue, Frame } from './wire.js';
