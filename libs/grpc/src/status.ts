// gRPC's wire conventions that are not HTTP/2: grpc-message's percent-encoding, grpc-timeout
// and the 5-byte message prefix. Status codes are @flotilla/errdefs' GrpcCode, the one table.

export interface Status {
  code: number;
  message: string;
}

/** A status a handler throws to end its call with that code and message. */
export class GrpcError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

/**
 * grpc-message as the gRPC spec writes it: bytes 0x20-0x7E except '%' as they are, every other
 * byte of the UTF-8 encoding as %XX. The result is plain ASCII, valid as an HTTP/2 header value.
 */
export function encodeGrpcMessage(message: string): string {
  let plain = true;
  for (let i = 0; i < message.length; i++) {
    const c = message.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c === 0x25) {
      plain = false;
      break;
    }
  }
  if (plain) return message;
  let out = '';
  for (const b of Buffer.from(message, 'utf8')) {
    out += b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

const TIMEOUT_UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/** grpc-timeout (`<1-8 digits><H|M|S|m|u|n>`) in milliseconds, or undefined when malformed. */
export function parseGrpcTimeout(v: string): number | undefined {
  const m = /^(\d{1,8})([HMSmun])$/.exec(v);
  if (!m) return undefined;
  return Number(m[1]) * TIMEOUT_UNIT_MS[m[2]!]!;
}

/** The 5-byte prefix of an uncompressed gRPC message of `length` bytes. */
export function messagePrefix(length: number): Buffer {
  const head = Buffer.allocUnsafe(5);
  head[0] = 0;
  head.writeUInt32BE(length, 1);
  return head;
}
