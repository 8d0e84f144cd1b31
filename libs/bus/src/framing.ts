// Batches of a streamed reply. A batch is a sequence of records:
//   u32 BE length | u8 flags | bytes
// flags bit 0 set means "the message continues in the next record" — a message larger than
// one NATS payload is cut into parts, so containerd's 16 MiB gRPC messages cross a bus whose
// payloads are capped (1 MiB by default).
export const RECORD_HEADER = 5;
const MORE = 1;

/**
 * The server side of one streamed reply: pulls messages from `it` and cuts them into
 * batches of at most `limit` bytes. A message that does not fit is continued in the next
 * batch, so memory held per stream is one batch plus one message.
 */
export class StreamCursor {
  private partial?: { msg: Uint8Array; off: number };
  private pending?: Promise<IteratorResult<Uint8Array>>;
  private finished = false;
  /**
   * @param holdMs how long an empty batch may wait for a first message; after that an
   *   empty batch goes out as a heartbeat (long-lived streams such as event subscriptions).
   */
  constructor(private readonly it: AsyncIterator<Uint8Array>, private readonly limit: number, private readonly holdMs = 15_000) {}

  /** The next batch (at most `limit` bytes, default the cursor's); `end` is true when nothing follows it. */
  async next(limit = this.limit): Promise<{ batch: Uint8Array; end: boolean }> {
    const parts: Uint8Array[] = [];
    let size = 0;
    while (size + RECORD_HEADER < limit) {
      if (!this.partial) {
        const p = this.pending ?? this.it.next();
        this.pending = undefined;
        // Something to send already: don't wait for more. Nothing yet: wait up to holdMs.
        const r = await settleWithin(p, parts.length > 0 ? 0 : this.holdMs);
        if (r === NOT_YET) {
          this.pending = p;
          break;
        }
        if (r.done) {
          this.finished = true;
          break;
        }
        this.partial = { msg: r.value, off: 0 };
      }
      const { msg, off } = this.partial;
      const n = Math.min(limit - size - RECORD_HEADER, msg.length - off);
      const more = off + n < msg.length;
      const hdr = Buffer.allocUnsafe(RECORD_HEADER);
      hdr.writeUInt32BE(n, 0);
      hdr[4] = more ? MORE : 0;
      parts.push(hdr, msg.subarray(off, off + n));
      size += RECORD_HEADER + n;
      if (more) {
        this.partial.off += n;
        break;
      }
      this.partial = undefined;
    }
    return { batch: Buffer.concat(parts, size), end: this.finished && !this.partial };
  }

  async cancel(): Promise<void> {
    this.partial = undefined;
    await this.it.return?.();
  }
}

const NOT_YET = Symbol('not-yet');

/** `p`'s result if it settles within `ms` (0: within this turn of the event loop). */
function settleWithin<T>(p: Promise<T>, ms: number): Promise<T | typeof NOT_YET> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<typeof NOT_YET>((resolve) => {
    timer = ms > 0 ? setTimeout(() => resolve(NOT_YET), ms) : (setImmediate(() => resolve(NOT_YET)) as unknown as NodeJS.Timeout);
  });
  return Promise.race([p, t]).finally(() => {
    if (ms > 0) clearTimeout(timer);
    else clearImmediate(timer as unknown as NodeJS.Immediate);
  });
}

/** Reassembles messages from batches, in order. */
export class BatchReader {
  private pending: Uint8Array[] = [];

  /** Returns the complete messages in `batch`; a trailing part waits for the next batch. */
  read(batch: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    const buf = Buffer.from(batch.buffer, batch.byteOffset, batch.byteLength);
    let off = 0;
    while (off < buf.length) {
      if (off + RECORD_HEADER > buf.length) throw new Error('stream batch: truncated record header');
      const n = buf.readUInt32BE(off);
      const more = (buf[off + 4]! & MORE) !== 0;
      off += RECORD_HEADER;
      if (off + n > buf.length) throw new Error('stream batch: truncated record');
      this.pending.push(buf.subarray(off, off + n));
      off += n;
      if (!more) {
        out.push(this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending));
        this.pending = [];
      }
    }
    return out;
  }

  get incomplete(): boolean {
    return this.pending.length > 0;
  }
}
