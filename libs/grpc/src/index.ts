// @flotilla/grpc: a gRPC server over HTTP/2 on plain sockets (the gateway's), with its HPACK.
export { GrpcServer } from './server.js';
export type { ServerOptions, Call, StreamingCall, BidiCall, UnaryHandler, ServerStreamHandler, BidiHandler } from './server.js';
export { GrpcError, encodeGrpcMessage, parseGrpcTimeout, messagePrefix } from './status.js';
export type { Status } from './status.js';
export { HpackDecoder, HpackError, encodeHeaders } from './hpack.js';
