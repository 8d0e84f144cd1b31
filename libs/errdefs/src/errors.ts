// containerd's error taxonomy (errdefs/errors.go). Every flotilla store and service
// throws these; the gateway and the bus translate them to gRPC codes and NATS headers
// in exactly one place each (grpc.ts, and @flotilla/bus).

/** Error classes, spelled as containerd's sentinel errors print themselves. */
export const ErrorClass = {
  Unknown: 'unknown',
  InvalidArgument: 'invalid argument',
  NotFound: 'not found',
  AlreadyExists: 'already exists',
  FailedPrecondition: 'failed precondition',
  Unavailable: 'unavailable',
  NotImplemented: 'not implemented',
  Canceled: 'context canceled',
  DeadlineExceeded: 'context deadline exceeded',
  // Not one of containerd's errdefs, but its content Write answers codes.OutOfRange
  // directly for a write at the wrong offset; carried as a class so the code survives the bus.
  OutOfRange: 'out of range',
} as const;
export type ErrorClass = (typeof ErrorClass)[keyof typeof ErrorClass];

const CLASSES = new Set<string>(Object.values(ErrorClass));

/**
 * A classified error. `message` follows containerd's wrapping convention
 * (`<context>: <class>`, e.g. `image "x": not found`) so clients that print it
 * read the same text containerd gives them.
 */
export class ContainerdError extends Error {
  readonly errorClass: ErrorClass;
  constructor(errorClass: ErrorClass, message?: string, options?: { cause?: unknown }) {
    super(message ?? errorClass, options);
    this.name = 'ContainerdError';
    this.errorClass = errorClass;
  }
}

function make(cls: ErrorClass) {
  /** `context` is prefixed as containerd's errors.Wrapf does: "<context>: <class>". */
  return (context?: string, options?: { cause?: unknown }) =>
    new ContainerdError(cls, context ? `${context}: ${cls}` : cls, options);
}

export const errInvalidArgument = make(ErrorClass.InvalidArgument);
export const errNotFound = make(ErrorClass.NotFound);
export const errAlreadyExists = make(ErrorClass.AlreadyExists);
export const errFailedPrecondition = make(ErrorClass.FailedPrecondition);
export const errUnavailable = make(ErrorClass.Unavailable);
export const errNotImplemented = make(ErrorClass.NotImplemented);
export const errUnknown = make(ErrorClass.Unknown);

/** An error of a given class whose message is already final (e.g. received over the wire). */
export function withClass(cls: ErrorClass, message: string): ContainerdError {
  return new ContainerdError(cls, message);
}

export function isErrorClass(value: string): value is ErrorClass {
  return CLASSES.has(value);
}

/** The class of `err`, walking `cause` chains; Unknown when nothing in it is classified. */
export function classOf(err: unknown): ErrorClass {
  for (let e: unknown = err, depth = 0; e && depth < 16; depth++) {
    if (e instanceof ContainerdError) return e.errorClass;
    if (typeof e === 'object' && e !== null && 'name' in e && (e as Error).name === 'AbortError') return ErrorClass.Canceled;
    e = (e as { cause?: unknown }).cause;
  }
  return ErrorClass.Unknown;
}

export const isNotFound = (err: unknown) => classOf(err) === ErrorClass.NotFound;
export const isAlreadyExists = (err: unknown) => classOf(err) === ErrorClass.AlreadyExists;
export const isInvalidArgument = (err: unknown) => classOf(err) === ErrorClass.InvalidArgument;
export const isFailedPrecondition = (err: unknown) => classOf(err) === ErrorClass.FailedPrecondition;
export const isUnavailable = (err: unknown) => classOf(err) === ErrorClass.Unavailable;
export const isNotImplemented = (err: unknown) => classOf(err) === ErrorClass.NotImplemented;

/** The message to send across a boundary: the error's own text. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
