// @flotilla/errdefs: containerd's error taxonomy and its gRPC mapping.
export {
  ErrorClass, ContainerdError, classOf, isErrorClass, messageOf, withClass,
  errInvalidArgument, errNotFound, errAlreadyExists, errFailedPrecondition,
  errUnavailable, errNotImplemented, errUnknown,
  isNotFound, isAlreadyExists, isInvalidArgument, isFailedPrecondition, isUnavailable, isNotImplemented,
} from './errors.js';
export { GrpcCode, grpcCodeOf, classOfGrpcCode } from './grpc.js';
