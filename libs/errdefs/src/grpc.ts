// The one translation between containerd's error classes and gRPC status codes
// (containerd errdefs/grpc.go). Exhaustive both ways.
import { ErrorClass } from './errors.js';

/** gRPC status codes (numbers as on the wire; grpc-js's `status` enum has the same values). */
export const GrpcCode = {
  OK: 0, Canceled: 1, Unknown: 2, InvalidArgument: 3, DeadlineExceeded: 4, NotFound: 5,
  AlreadyExists: 6, PermissionDenied: 7, ResourceExhausted: 8, FailedPrecondition: 9,
  Aborted: 10, OutOfRange: 11, Unimplemented: 12, Internal: 13, Unavailable: 14,
  DataLoss: 15, Unauthenticated: 16,
} as const;
export type GrpcCode = (typeof GrpcCode)[keyof typeof GrpcCode];

const toCode: Record<ErrorClass, GrpcCode> = {
  [ErrorClass.Unknown]: GrpcCode.Unknown,
  [ErrorClass.InvalidArgument]: GrpcCode.InvalidArgument,
  [ErrorClass.NotFound]: GrpcCode.NotFound,
  [ErrorClass.AlreadyExists]: GrpcCode.AlreadyExists,
  [ErrorClass.FailedPrecondition]: GrpcCode.FailedPrecondition,
  [ErrorClass.Unavailable]: GrpcCode.Unavailable,
  [ErrorClass.NotImplemented]: GrpcCode.Unimplemented,
  [ErrorClass.Canceled]: GrpcCode.Canceled,
  [ErrorClass.DeadlineExceeded]: GrpcCode.DeadlineExceeded,
  [ErrorClass.OutOfRange]: GrpcCode.OutOfRange,
};

export function grpcCodeOf(cls: ErrorClass): GrpcCode {
  return toCode[cls];
}

/** containerd's FromGRPC: codes it does not know map to Unknown. */
export function classOfGrpcCode(code: number): ErrorClass {
  switch (code) {
    case GrpcCode.InvalidArgument: return ErrorClass.InvalidArgument;
    case GrpcCode.AlreadyExists: return ErrorClass.AlreadyExists;
    case GrpcCode.NotFound: return ErrorClass.NotFound;
    case GrpcCode.Unavailable: return ErrorClass.Unavailable;
    case GrpcCode.FailedPrecondition: return ErrorClass.FailedPrecondition;
    case GrpcCode.Unimplemented: return ErrorClass.NotImplemented;
    case GrpcCode.Canceled: return ErrorClass.Canceled;
    case GrpcCode.DeadlineExceeded: return ErrorClass.DeadlineExceeded;
    case GrpcCode.OutOfRange: return ErrorClass.OutOfRange;
    default: return ErrorClass.Unknown;
  }
}
