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
  private pending?: Promise<IteratorResult<Uint8Array | readonly Uint8Array[]>>;
  /** Messages of a page the producer yielded at once, from `pageAt` on, not yet batched. */
  private page: readonly Uint8Array[] = [];
  private pageAt = 0;
  private finished = false;
  /** A batch buffer the transport has finished with (see `reuse`), for the next batch that fits. */
  private spare?: Buffer;
  /** The memory of the batches this cursor allocated for reuse. */
  private readonly mine = new WeakSet<ArrayBufferLike>();
  /**
   * @param holdMs how long an empty batch may wait for a first message; after that an
   *   empty batch goes out as a heartbeat (long-lived streams such as event subscriptions).
   */
  constructor(private readonly it: AsyncIterator<Uint8Array | readonly Uint8Array[]>, private readonly limit: number, private readonly holdMs = 15_000) {}

  /** The next batch (at most `limit` bytes, default the cursor's); `end` is true when nothing follows it. */
  async next(limit = this.limit): Promise<{ batch: Uint8Array; end: boolean }> {
    const pieces: { msg: Uint8Array; off: number; n: number; more: boolean }[] = [];
    let size = 0;
    // Once the batch has something, it takes only what the producer yields within the same
    // turn of the event loop: one shared timer per batch, not one per message (a 10k-row
    // list is 10,000 messages).
    let turn: Promise<typeof NOT_YET> | undefined;
    let immediate: NodeJS.Immediate | undefined;
    try {
      while (size + RECORD_HEADER < limit) {
        if (!this.partial && this.pageAt < this.page.length) {
          // The rest of a page: no waiting, no turn of the event loop per message.
          this.partial = { msg: this.page[this.pageAt++]!, off: 0 };
        }
        if (!this.partial) {
          const p = this.pending ?? this.it.next();
          this.pending = undefined;
          // Nothing yet: wait up to holdMs for a first message.
          let r: IteratorResult<Uint8Array | readonly Uint8Array[]> | typeof NOT_YET;
          if (pieces.length === 0) r = await settleWithin(p, this.holdMs);
          else {
            turn ??= new Promise((resolve) => (immediate = setImmediate(() => resolve(NOT_YET))));
            r = await Promise.race([p, turn]);
          }
          if (r === NOT_YET) {
            this.pending = p;
            break;
          }
          if (r.done) {
            this.finished = true;
            break;
          }
          if (Array.isArray(r.value)) {
            this.page = r.value as readonly Uint8Array[];
            this.pageAt = 0;
            continue;
          }
          this.partial = { msg: r.value as Uint8Array, off: 0 };
        }
        const { msg, off } = this.partial;
        const n = Math.min(limit - size - RECORD_HEADER, msg.length - off);
        const more = off + n < msg.length;
        pieces.push({ msg, off, n, more });
        size += RECORD_HEADER + n;
        if (more) {
          this.partial.off += n;
          break;
        }
        this.partial = undefined;
      }
      if (!this.finished && !this.partial && this.pageAt >= this.page.length && pieces.length > 0) {
        // Full with nothing left over: if the producer is done within this turn, this batch
        // says so (no empty batch and round trip just to learn it).
        const p = this.pending ?? this.it.next();
        turn ??= new Promise((resolve) => (immediate = setImmediate(() => resolve(NOT_YET))));
        const r = await Promise.race([p, turn]);
        if (r !== NOT_YET && r.done) this.finished = true;
        else this.pending = p;
      }
    } finally {
      if (immediate) clearImmediate(immediate);
    }
    // One buffer per batch, records written in place: the spare one when it is large enough.
    // A 10k-container list is ~27 MB in ~10 batches; fresh buffers each time add to the
    // external memory whose growth makes V8 run its major collections.
    let batch: Buffer;
    if (this.spare && this.spare.length >= size) {
      batch = this.spare.subarray(0, size);
      this.spare = undefined;
    } else if (size >= REUSABLE) {
      // Its own memory (not node's shared pool), rounded up so that the next batch, of about
      // the same size, fits.
      const whole = Buffer.allocUnsafeSlow(Math.ceil(size / REUSABLE) * REUSABLE);
      this.mine.add(whole.buffer);
      batch = whole.subarray(0, size);
    } else {
      batch = Buffer.allocUnsafe(size);
    }
    let o = 0;
    for (const { msg, off, n, more } of pieces) {
      batch.writeUInt32BE(n, o);
      batch[o + 4] = more ? MORE : 0;
      batch.set(msg.subarray(off, off + n), o + RECORD_HEADER);
      o += RECORD_HEADER + n;
    }
    return { batch, end: this.finished && !this.partial && this.pageAt >= this.page.length };
  }

  /**
   * `batch`, returned by `next`, has been written out (the transport holds no reference to
   * it any more): its buffer may take a later batch. Never called for a batch handed to a
   * transport that may still read it (NATS).
   */
  reuse(batch: Uint8Array): void {
    if (!this.mine.has(batch.buffer) || (this.spare && this.spare.length >= batch.buffer.byteLength)) return;
    this.spare = Buffer.from(batch.buffer);
  }

  async cancel(): Promise<void> {
    this.spare = undefined;
    this.partial = undefined;
    this.page = [];
    await this.it.return?.();
  }
}

const NOT_YET = Symbol('not-yet');
/** Batches from this size on get memory of their own, reusable (rounded up to a multiple of it). */
const REUSABLE = 1024 * 1024;

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

/**
 * Walks the records of a batch: `fn(start, n, more)` for each, `start` the offset of its
 * header, its `n` bytes after the header, `more` set when its message continues in the next
 * record. `fn` may overwrite the record's header: the walk has read it already. Throws on
 * a truncated record.
 */
export function forEachRecord(buf: Buffer, fn: (start: number, n: number, more: boolean) => void): void {
  let off = 0;
  while (off < buf.length) {
    if (off + RECORD_HEADER > buf.length) throw new Error('stream batch: truncated record header');
    const n = buf.readUInt32BE(off);
    const more = (buf[off + 4]! & MORE) !== 0;
    const end = off + RECORD_HEADER + n;
    if (end > buf.length) throw new Error('stream batch: truncated record');
    fn(off, n, more);
    off = end;
  }
}

/** Reassembles messages from batches, in order. */
export class BatchReader {
  private pending: Uint8Array[] = [];

  /** Returns the complete messages in `batch`; a trailing part waits for the next batch. */
  read(batch: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    const buf = Buffer.from(batch.buffer, batch.byteOffset, batch.byteLength);
    forEachRecord(buf, (start, n, more) => {
      this.pending.push(buf.subarray(start + RECORD_HEADER, start + RECORD_HEADER + n));
      if (!more) {
        out.push(this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending));
        this.pending = [];
      }
    });
    return out;
  }

  get incomplete(): boolean {
    return this.pending.length > 0;
  }
}
