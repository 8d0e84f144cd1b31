// grpc.health.v1.Health, hand-encoded (two one-field messages; not in containerd's protos).
import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';

export const ServingStatus = { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2 } as const;

export function decodeCheckRequest(buf: Buffer): { service: string } {
  const r = new BinaryReader(buf);
  let service = '';
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag >>> 3 === 1 && (tag & 7) === 2) service = r.string();
    else r.skip(tag & 7);
  }
  return { service };
}

export function encodeCheckResponse(status: number): Buffer {
  return Buffer.from(new BinaryWriter().uint32(8).int32(status).finish());
}

export const HEALTH_SERVICE = 'grpc.health.v1.Health';
