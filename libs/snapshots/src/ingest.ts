// Writing a blob into the content store over the bus, as containerd's differ writes a new
// layer through content.Writer: one Write session (proto/flotilla/content.proto) opened
// with a STAT, the data as WRITE steps from offset 0 (which truncates a resumed ingest of
// the same ref, as the walking differ's Truncate(0)), then a COMMIT with the expected
// digest, size and labels. A blob that already exists is a success.
import { Writable } from 'node:stream';
import { content as capi, flotillaContent as fc } from '@flotilla/api';
import type { CallContext } from '@flotilla/bus';
import { isAlreadyExists } from '@flotilla/errdefs';

/** The part of @flotilla/bus's Bus this needs. */
export interface RequestBus {
  readonly chunkLimit: number;
  request(subject: string, data: Uint8Array, ctx?: CallContext): Promise<Uint8Array>;
}

export interface Ingest {
  /** Where the data goes; ending it (end()) flushes the last step. */
  readonly sink: Writable;
  /** Commits what was written as `digest` of `size` bytes; AlreadyExists counts as done. */
  commit(size: number, digest: string, labels: Record<string, string>): Promise<void>;
  /** Ends the session without committing (the ingest stays, resumable, as containerd's Close). */
  close(): Promise<void>;
}

const WA = capi.WriteAction;
/** Data per WRITE step: well inside one bus payload. */
const MAX_STEP = 1 << 20;

/** Opens a Write session for `ref` on the content service reached at `firstSubject`. */
export async function openIngest(bus: RequestBus, firstSubject: string, ref: string, ctx: CallContext): Promise<Ingest> {
  let session = '';
  let next = '';
  const step = async (req: Partial<capi.WriteContentRequest>): Promise<fc.WriteStepReply> => {
    const data = fc.WriteStep.encode({ session, request: capi.WriteContentRequest.fromPartial({ ref, ...req }), close: false, acceptedAt: 0, digest: '', digestOffset: 0 }).finish();
    const reply = fc.WriteStepReply.decode(await bus.request(session ? next : firstSubject, data, ctx));
    if (!session) {
      session = reply.session;
      next = reply.sessionSubject;
    }
    return reply;
  };
  const close = async () => {
    if (!session) return;
    const s = session;
    session = '';
    await bus.request(next, fc.WriteStep.encode({ session: s, request: undefined, close: true, acceptedAt: 0, digest: '', digestOffset: 0 }).finish(), ctx).catch(() => {});
  };

  await step({ action: WA.STAT });
  const limit = Math.max(4096, Math.min(MAX_STEP, bus.chunkLimit - 8192));
  let offset = 0;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const flush = async () => {
    if (pendingBytes === 0) return;
    let buf = Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    while (buf.length > 0) {
      const piece = buf.subarray(0, limit);
      await step({ action: WA.WRITE, offset, data: piece });
      offset += piece.length;
      buf = buf.subarray(piece.length);
    }
  };
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes < limit) return cb();
      flush().then(() => cb(), cb);
    },
    final(cb) {
      flush().then(() => cb(), cb);
    },
  });

  return {
    sink,
    close,
    async commit(size, digest, labels) {
      try {
        // An empty blob has had no WRITE: the commit itself starts it at offset 0.
        await step({ action: WA.COMMIT, offset, total: size, expected: digest, labels });
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
      } finally {
        await close();
      }
    },
  };
}
