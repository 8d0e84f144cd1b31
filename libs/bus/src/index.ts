// @flotilla/bus: flotilla's NATS transport.
// Subjects (one builder per service kind), the call context carried in headers,
// request/reply with containerd error classes, pulled stream batches, micro services.
export {
  SUBJECT_ROOT, ClusterService, NodeService, SubjectError, serviceSubject, nodeSubject, eventSubject,
  topicOfSubject, streamSubject, instanceSubject, instanceOfSubject, ALL_EVENTS,
} from './subjects.js';
export { Header, currentContext, runWithContext, remainingMs, contextToHeaders, contextFromHeaders } from './context.js';
export type { CallContext } from './context.js';
export { Bus, CONTINUE } from './bus.js';
export type { BusOptions, Payload, EndpointSpec, ServiceSpec, UnaryHandler, StreamHandler } from './bus.js';
export { BatchReader, StreamCursor, RECORD_HEADER, forEachRecord } from './framing.js';
export { DirectServer, DirectLink } from './direct.js';
export { endpointsFor, rpcClient } from './rpc.js';
export type { Implementation, Client } from './rpc.js';
