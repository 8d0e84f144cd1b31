// ttrpc's wire format (containerd/ttrpc 1.1): frames of a 10-byte header
//   u32 BE payload length | u32 BE stream id | u8 type (1 request, 2 response) | u8 flags
// followed by a protobuf Request or Response. Clients use odd stream ids, increasing by 2.
import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { Status } from '@flotilla/api';

export const HEADER_LENGTH = 10;
export const MAX_MESSAGE = 4 << 20;
export const TYPE_REQUEST = 1;
export const TYPE_RESPONSE = 2;

export interface TtrpcRequest {
  service: string;
  method: string;
  payload: Uint8Array;
  timeoutNano: number;
  metadata: { key: string; value: string }[];
}

export interface TtrpcResponse {
  status?: Status;
  payload: Uint8Array;
}

export function encodeRequest(r: TtrpcRequest): Uint8Array {
  const w = new BinaryWriter();
  w.uint32(10).string(r.service);
  w.uint32(18).string(r.method);
  if (r.payload.length) w.uint32(26).bytes(r.payload);
  if (r.timeoutNano) w.uint32(32).int64(r.timeoutNano);
  for (const kv of r.metadata) w.uint32(42).fork().uint32(10).string(kv.key).uint32(18).string(kv.value).join();
  return w.finish();
}

export function decodeRequest(buf: Uint8Array): TtrpcRequest {
  const r = new BinaryReader(buf);
  const out: TtrpcRequest = { service: '', method: '', payload: new Uint8Array(0), timeoutNano: 0, metadata: [] };
  while (r.pos < r.len) {
    const tag = r.uint32();
    switch (tag) {
      case 10: out.service = r.string(); break;
      case 18: out.method = r.string(); break;
      case 26: out.payload = r.bytes(); break;
      case 32: out.timeoutNano = Number(r.int64()); break;
      case 42: {
        const end = r.uint32() + r.pos;
        const kv = { key: '', value: '' };
        while (r.pos < end) {
          const t = r.uint32();
          if (t === 10) kv.key = r.string();
          else if (t === 18) kv.value = r.string();
          else r.skip(t & 7);
        }
        out.metadata.push(kv);
        break;
      }
      default: r.skip(tag & 7);
    }
  }
  return out;
}

export function encodeResponse(r: TtrpcResponse): Uint8Array {
  const w = new BinaryWriter();
  if (r.status) w.uint32(10).bytes(Status.encode(r.status).finish());
  if (r.payload.length) w.uint32(18).bytes(r.payload);
  return w.finish();
}

export function decodeResponse(buf: Uint8Array): TtrpcResponse {
  const r = new BinaryReader(buf);
  const out: TtrpcResponse = { payload: new Uint8Array(0) };
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag === 10) out.status = Status.decode(r.bytes());
    else if (tag === 18) out.payload = r.bytes();
    else r.skip(tag & 7);
  }
  return out;
}

export function frame(streamId: number, type: number, payload: Uint8Array): Buffer {
  const hdr = Buffer.allocUnsafe(HEADER_LENGTH);
  hdr.writeUInt32BE(payload.length, 0);
  hdr.writeUInt32BE(streamId, 4);
  hdr[8] = type;
  hdr[9] = 0;
  return Buffer.concat([hdr, payload]);
}

/** Splits a byte stream into frames; a frame over MAX_MESSAGE is a protocol error. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): { streamId: number; type: number; payload: Buffer }[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out = [];
    while (this.buf.length >= HEADER_LENGTH) {
      const len = this.buf.readUInt32BE(0);
      if (len > MAX_MESSAGE) throw new Error(`ttrpc: message length ${len} exceeds maximum message size of ${MAX_MESSAGE}`);
      if (this.buf.length < HEADER_LENGTH + len) break;
      out.push({ streamId: this.buf.readUInt32BE(4), type: this.buf[8]!, payload: this.buf.subarray(HEADER_LENGTH, HEADER_LENGTH + len) });
      this.buf = this.buf.subarray(HEADER_LENGTH + len);
    }
    return out;
  }
}
