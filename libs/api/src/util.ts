import type { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { Any } from './gen/google/protobuf/any.js';
import type { Timestamp } from './gen/google/protobuf/timestamp.js';

/** The codec surface every ts-proto message object has. */
export interface MessageType<T = any> {
  encode(message: T, writer?: BinaryWriter): BinaryWriter;
  decode(input: BinaryReader | Uint8Array, length?: number): T;
  fromPartial(object: any): T;
}

/** ts-proto's generic service definition (outputServices=generic-definitions). */
export interface MethodDefinition {
  name: string;
  requestType: MessageType;
  requestStream: boolean;
  responseType: MessageType;
  responseStream: boolean;
}
export interface ServiceDefinition {
  name: string;
  fullName: string;
  methods: Record<string, MethodDefinition>;
}

export function toTimestamp(d: Date | number = Date.now()): Timestamp {
  const ms = typeof d === 'number' ? d : d.getTime();
  const seconds = Math.floor(ms / 1000);
  // Sub-millisecond fractions (fs mtimeMs) are kept, but nanos must stay an int32 below 1e9.
  return { seconds, nanos: Math.min(999_999_999, Math.round((ms - seconds * 1000) * 1_000_000)) };
}

export function fromTimestamp(t: Timestamp | undefined): Date {
  return new Date(t ? t.seconds * 1000 + Math.floor(t.nanos / 1_000_000) : 0);
}

/** Packs a message as Any with containerd's type URL convention (the bare full name). */
export function packAny<T>(typeUrl: string, type: MessageType<T>, message: T): Any {
  return { typeUrl, value: Buffer.from(type.encode(message).finish()) };
}

/**
 * The bytes a content Read covers of a blob of `total` bytes, as containerd's content
 * service computes them: a negative offset reads from 0; a size of 0 or one past the end
 * reads to the end. Undefined when the offset is past the end (OutOfRange).
 */
export function readRange(offset: number, size: number, total: number): { offset: number; size: number } | undefined {
  const from = Math.max(0, offset);
  if (from > total) return undefined;
  return { offset: from, size: size <= 0 || from + size > total ? total - from : size };
}
