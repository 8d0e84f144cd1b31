// ttrpc's wire format (containerd/ttrpc as vendored by containerd 1.6): a stream of frames,
// each a 10-byte header
//   u32 BE payload length | u32 BE stream id | u8 type (1 request, 2 response) | u8 flags
// followed by the payload, a protobuf Request or Response. Clients number their streams
// with odd ids increasing by 2; a payload over 4 MiB is refused per stream, not per
// connection (the reader skips it and the stream gets ResourceExhausted).
import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { Status } from '@flotilla/api';

export const HEADER_LENGTH = 10;
/** Largest payload either side accepts (ttrpc's messageLengthMax). */
export const MAX_MESSAGE = 4 << 20;
export const TYPE_REQUEST = 1;
export const TYPE_RESPONSE = 2;

export interface KeyValue {
  key: string;
  value: string;
}

/** ttrpc.Request: service=1, method=2, payload=3, timeout_nano=4, metadata=5. */
export interface TtrpcRequest {
  service: string;
  method: string;
  payload: Uint8Array;
  /** Relative deadline in nanoseconds; 0 means none. */
  timeoutNano: number;
  metadata: KeyValue[];
}

/** ttrpc.Response: status=1 (google.rpc.Status), payload=2. */
export interface TtrpcResponse {
  status?: Status;
  payload: Uint8Array;
}

const EMPTY = new Uint8Array(0);

export function encodeRequest(r: TtrpcRequest): Uint8Array {
  const w = new BinaryWriter();
  if (r.service) w.uint32((1 << 3) | 2).string(r.service);
  if (r.method) w.uint32((2 << 3) | 2).string(r.method);
  if (r.payload.length) w.uint32((3 << 3) | 2).bytes(r.payload);
  if (r.timeoutNano) w.uint32((4 << 3) | 0).int64(r.timeoutNano);
  for (const kv of r.metadata) {
    w.uint32((5 << 3) | 2).fork();
    if (kv.key) w.uint32((1 << 3) | 2).string(kv.key);
    if (kv.value) w.uint32((2 << 3) | 2).string(kv.value);
    w.join();
  }
  return w.finish();
}

function decodeKeyValue(bytes: Uint8Array): KeyValue {
  const r = new BinaryReader(bytes);
  const kv: KeyValue = { key: '', value: '' };
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag === ((1 << 3) | 2)) kv.key = r.string();
    else if (tag === ((2 << 3) | 2)) kv.value = r.string();
    else r.skip(tag & 7);
  }
  return kv;
}

/** Throws on malformed protobuf (the server answers InvalidArgument for that stream). */
export function decodeRequest(buf: Uint8Array): TtrpcRequest {
  const r = new BinaryReader(buf);
  const out: TtrpcRequest = { service: '', method: '', payload: EMPTY, timeoutNano: 0, metadata: [] };
  while (r.pos < r.len) {
    const tag = r.uint32();
    switch (tag) {
      case (1 << 3) | 2: out.service = r.string(); break;
      case (2 << 3) | 2: out.method = r.string(); break;
      case (3 << 3) | 2: out.payload = r.bytes(); break;
      case (4 << 3) | 0: out.timeoutNano = Number(r.int64()); break;
      case (5 << 3) | 2: out.metadata.push(decodeKeyValue(r.bytes())); break;
      default: r.skip(tag & 7);
    }
  }
  return out;
}

export function encodeResponse(r: TtrpcResponse): Uint8Array {
  const w = new BinaryWriter();
  if (r.status) w.uint32((1 << 3) | 2).bytes(Status.encode(r.status).finish());
  if (r.payload.length) w.uint32((2 << 3) | 2).bytes(r.payload);
  return w.finish();
}

export function decodeResponse(buf: Uint8Array): TtrpcResponse {
  const r = new BinaryReader(buf);
  const out: TtrpcResponse = { payload: EMPTY };
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag === ((1 << 3) | 2)) out.status = Status.decode(r.bytes());
    else if (tag === ((2 << 3) | 2)) out.payload = r.bytes();
    else r.skip(tag & 7);
  }
  return out;
}

/** One frame as bytes ready to write. The caller checks the payload size first. */
export function frame(streamId: number, type: number, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER_LENGTH + payload.length);
  out.writeUInt32BE(payload.length, 0);
  out.writeUInt32BE(streamId, 4);
  out[8] = type;
  out[9] = 0;
  out.set(payload, HEADER_LENGTH);
  return out;
}

export interface Frame {
  streamId: number;
  type: number;
  /** The payload, or undefined when it was over MAX_MESSAGE and skipped; `length` says how long. */
  payload: Buffer | undefined;
  length: number;
}

/**
 * Splits a byte stream into frames. A frame whose declared length is over MAX_MESSAGE is
 * skipped without buffering it and surfaces with `payload: undefined`, so the connection
 * survives and only that stream fails (as ttrpc's channel.recv does).
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes of an oversized payload still to be thrown away. */
  private discarding = 0;
  /** Bytes needed before the next frame can complete; avoids re-joining chunks of a large frame. */
  private need = HEADER_LENGTH;

  push(chunk: Buffer): Frame[] {
    const out: Frame[] = [];
    if (this.discarding) {
      const n = Math.min(this.discarding, chunk.length);
      this.discarding -= n;
      chunk = chunk.subarray(n);
    }
    if (chunk.length) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    if (this.buffered < this.need) return out;
    let buf = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    while (buf.length >= HEADER_LENGTH) {
      const length = buf.readUInt32BE(0);
      const streamId = buf.readUInt32BE(4);
      const type = buf[8]!;
      if (length > MAX_MESSAGE) {
        const have = Math.min(length, buf.length - HEADER_LENGTH);
        this.discarding = length - have;
        buf = buf.subarray(HEADER_LENGTH + have);
        out.push({ streamId, type, payload: undefined, length });
        continue;
      }
      if (buf.length < HEADER_LENGTH + length) {
        this.need = HEADER_LENGTH + length;
        break;
      }
      out.push({ streamId, type, payload: buf.subarray(HEADER_LENGTH, HEADER_LENGTH + length), length });
      buf = buf.subarray(HEADER_LENGTH + length);
    }
    if (buf.length < HEADER_LENGTH) this.need = HEADER_LENGTH;
    this.chunks = buf.length ? [buf] : [];
    this.buffered = buf.length;
    return out;
  }
}

export function oversizeMessage(length: number): string {
  return `message length ${length} exceed maximum message size of ${MAX_MESSAGE}`;
}
