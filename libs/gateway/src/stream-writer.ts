// Server-stream messages written straight to the call's HTTP/2 stream, framed as grpc-js
// frames them (u8 0 = uncompressed, u32 length, bytes). grpc-js's ServerWritableStream
// hands one message at a time to HTTP/2 and waits for that write to complete before the
// next: an event-loop turn and ~12 µs of CPU per message, most of the gateway's work in a
// ListStream of 10,000 containers. Queued on the HTTP/2 stream instead, the messages go to
// the socket many per write; and a bus batch of whole messages becomes gRPC frames by
// rewriting its record headers in place (GrpcFramer), one write per batch. Headers and
// status stay grpc-js's: sendMetadata before the first message, and the call's end (or
// error) after the last, which grpc-js sends behind everything already queued.
import type { Duplex } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { RECORD_HEADER, forEachRecord } from '@flotilla/bus';

/** What is used of node's ServerHttp2Stream. */
type Http2Out = Duplex & { respond: unknown; session: unknown };

/**
 * The HTTP/2 stream under a grpc-js server call, or undefined. grpc-js does not expose it:
 * it is the `stream` of the innermost call of `call.call`'s interceptor chain (grpc-js 1.10
 * to 1.14). libs/gateway/test/stream-writer.test.ts fails if it is no longer found, rather
 * than letting every stream fall back to the slower path unnoticed.
 */
export function http2StreamOf(call: object): Http2Out | undefined {
  let c = (call as { call?: unknown }).call as { stream?: unknown; nextCall?: unknown } | undefined;
  for (let depth = 0; c && typeof c === 'object' && depth < 8; depth++) {
    const s = c.stream as Partial<Http2Out> | undefined;
    if (s && typeof s.write === 'function' && typeof s.respond === 'function' && s.session) return s as Http2Out;
    c = c.nextCall as typeof c;
  }
  return undefined;
}

export class MessageWriter {
  private readonly h2?: Http2Out;
  private started = false;

  /**
   * `maxMessage`: the server's grpc.max_send_message_length; a larger message goes through
   * grpc-js, which ends the call with its RESOURCE_EXHAUSTED as it would have.
   */
  constructor(private readonly call: grpc.ServerWritableStream<Buffer, Buffer>, private readonly maxMessage: number) {
    this.h2 = http2StreamOf(call);
  }

  /** Whether messages go straight to the HTTP/2 stream (false: through grpc-js's call.write). */
  get direct(): boolean {
    return this.h2 !== undefined;
  }

  /**
   * Queues one message; resolves once the stream takes more (true) or when the call is gone
   * (false: cancelled, past its deadline, or ended by grpc-js; the message was dropped).
   */
  async write(msg: Buffer): Promise<boolean> {
    const s = this.h2;
    if (!s || msg.length > this.maxMessage) return this.writeThroughCall(msg);
    if (!this.start(s)) return false;
    const head = Buffer.allocUnsafe(5);
    head[0] = 0;
    head.writeUInt32BE(msg.length, 1);
    let more = s.write(head);
    if (msg.length) more = s.write(msg);
    return more || waitFor(s, 'drain', ['close']);
  }

  /**
   * Queues bytes that are already whole gRPC frames, each message within maxMessage (only
   * when `direct`); resolves as write().
   */
  async writeFrames(frames: Buffer): Promise<boolean> {
    const s = this.h2!;
    if (!this.start(s)) return false;
    return s.write(frames) || waitFor(s, 'drain', ['close']);
  }

  /** Sends the response headers before the first message; false when the call is gone. */
  private start(s: Http2Out): boolean {
    if (s.destroyed || s.writableEnded) return false;
    if (!this.started) {
      this.started = true;
      this.call.sendMetadata(new grpc.Metadata());
      // grpc-js answers a cancelled call's sendMetadata by doing nothing.
      if (s.destroyed || s.writableEnded) return false;
    }
    return true;
  }

  private async writeThroughCall(msg: Buffer): Promise<boolean> {
    const c = this.call;
    if (c.cancelled || c.writableEnded || c.destroyed) return false;
    return c.write(msg) || waitFor(c, 'drain', ['close', 'cancelled']);
  }
}

/**
 * Turns the bus's stream batches (records `u32 length | u8 flags | bytes`, framing.ts) into
 * gRPC frames (`u8 0 | u32 length | bytes`): the headers are the same size, so a run of
 * whole messages is re-framed in place, the batch's own bytes becoming the frames. A
 * message cut across records is collected and framed on its own once complete; one larger
 * than `maxMessage` is handed back as a message for the caller to refuse as grpc-js would.
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

  /** Whether a message is still waiting for its remaining parts. */
  get incomplete(): boolean {
    return this.parts.length > 0;
  }

  private whole(): Buffer | { oversize: Buffer } {
    const msg = Buffer.concat(this.parts, this.partSize);
    this.parts = [];
    this.partSize = 0;
    if (msg.length > this.maxMessage) return { oversize: msg };
    const head = Buffer.allocUnsafe(5);
    head[0] = 0;
    head.writeUInt32BE(msg.length, 1);
    return Buffer.concat([head, msg]);
  }
}

/** Resolves true on `event`, false if one of `ends` comes first. */
function waitFor(s: Duplex | grpc.ServerWritableStream<Buffer, Buffer>, event: string, ends: string[]): Promise<boolean> {
  return new Promise((resolve) => {
    const on = () => done(true);
    const off = () => done(false);
    const done = (v: boolean) => {
      s.removeListener(event, on);
      for (const e of ends) s.removeListener(e, off);
      resolve(v);
    };
    s.once(event, on);
    for (const e of ends) s.once(e, off);
  });
}
