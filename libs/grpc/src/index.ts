// @flotilla/grpc: a gRPC server over HTTP/2 on plain sockets (the gateway's), with its HPACK.
export { HpackDecoder, HpackError, encodeHeaders } from './hpack.js';
