// Bus stream batches as gRPC frames: the server-stream relay's re-framing in place.
import { RECORD_HEADER, forEachRecord } from '@flotilla/bus';
import { messagePrefix } from '@flotilla/grpc';

/**
 * Turns the bus's stream batches (records `u32 length | u8 flags | bytes`, framing.ts) into
 * gRPC frames (`u8 0 | u32 length | bytes`): the headers are the same size, so a run of
 * whole messages is re-framed in place, the batch's own bytes becoming the frames. A
 * message cut across records is collected and framed on its own once complete; one larger
 * than `maxMessage` is handed back as a message for the caller to refuse (RESOURCE_EXHAUSTED, as grpc-go does).
 */
export class GrpcFramer {
  private parts: Buffer[] = [];
  private partSize = 0;

  constructor(private readonly maxMessage: number) {}

  /** The batch's content in order: Buffers of frames, and `{ oversize }` messages. */
  push(batch: Uint8Array): (Buffer | { oversize: Buffer })[] {
    const b = Buffer.from(batch.buffer, batch.byteOffset, batch.byteLength);
    const out: (Buffer | { oversize: Buffer })[] = [];
    let runStart = -1; // start of a run of whole messages re-framed in place
    forEachRecord(b, (start, n, more) => {
      if (!more && this.parts.length === 0) {
        if (runStart < 0) runStart = start;
        b[start] = 0;
        b.writeUInt32BE(n, start + 1);
        return;
      }
      if (runStart >= 0) out.push(b.subarray(runStart, start));
      runStart = -1;
      this.parts.push(b.subarray(start + RECORD_HEADER, start + RECORD_HEADER + n));
      this.partSize += n;
      if (!more) out.push(this.whole());
    });
    if (runStart >= 0) out.push(b.subarray(runStart));
    return out;
  }

  /** Whether the parts of the message waiting for the rest are views into `batch`'s bytes. */
  holds(batch: Uint8Array): boolean {
    const end = batch.byteOffset + batch.byteLength;
    return this.parts.some((p) => p.buffer === batch.buffer && p.byteOffset < end && p.byteOffset + p.byteLength > batch.byteOffset);
  }

  /** Whether a message is still waiting for its remaining parts. */
  get incomplete(): boolean {
    return this.parts.length > 0;
  }

  private whole(): Buffer | { oversize: Buffer } {
    const msg = Buffer.concat(this.parts, this.partSize);
    this.parts = [];
    this.partSize = 0;
    if (msg.length > this.maxMessage) return { oversize: msg };
    return Buffer.concat([messagePrefix(msg.length), msg]);
  }
}
