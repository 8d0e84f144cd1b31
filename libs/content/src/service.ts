// containerd's content gRPC service (services/content/contentserver) over ContentStore:
// request validation, proto <-> domain, and the Write protocol. The bidirectional Write
// stream reaches this process as a session of unary steps (see proto/flotilla/content.proto):
// writeOpen for the first message, writeNext for each later one, writeClose when the
// client's stream ends.
import { randomUUID } from 'node:crypto';
import { content as api, readRange, toTimestamp } from '@flotilla/api';
import type { CallContext } from '@flotilla/bus';
import { ContainerdError, ErrorClass, errUnavailable, withClass } from '@flotilla/errdefs';
import { digestError } from './digest.js';
import type { ContentStore, Info, Status, Writer } from './store.js';
import type { Vouched } from './backend.js';

interface WriteSession {
  id: string;
  ref: string;
  writer: Writer;
  /** containerd reuses one response message for the whole stream; fields carry over. */
  msg: api.WriteContentResponse;
  total: number;
  expected: string;
  timer: NodeJS.Timeout | undefined;
  /** Steps run one at a time in arrival order: the gateway may send the next before this one answers. */
  queue: Promise<unknown>;
}

/** A session the client stopped talking to is closed (ingest kept) after this long. */
const SESSION_IDLE_MS = 60_000;
/** time.Time{} as a protobuf Timestamp (0001-01-01T00:00:00Z). */
const GO_ZERO_TIME = { seconds: -62135596800, nanos: 0 };
/** containerd's List sends blocks of this many infos. */
const LIST_BLOCK = 100;

function invalid(msg: string): ContainerdError {
  // status.Errorf(codes.InvalidArgument, ...) in containerd: the text carries no class suffix.
  return withClass(ErrorClass.InvalidArgument, msg);
}

function toInfo(i: Info, withUpdated = true): api.Info {
  return {
    digest: i.digest,
    size: i.size,
    labels: i.labels,
    createdAt: toTimestamp(i.createdAt),
    updatedAt: withUpdated ? toTimestamp(i.updatedAt) : GO_ZERO_TIME,
  };
}

function toStatus(s: Status): api.Status {
  return { ref: s.ref, offset: s.offset, total: s.total, expected: s.expected, startedAt: toTimestamp(s.startedAt), updatedAt: toTimestamp(s.updatedAt) };
}

export class ContentService {
  private readonly sessions = new Map<string, WriteSession>();

  constructor(
    private readonly store: ContentStore,
    /** Largest data chunk per Read reply. */
    private readonly readChunk = 1024 * 1024,
  ) {}

  async info(req: api.InfoRequest, ctx: CallContext): Promise<api.InfoResponse> {
    if (digestError(req.digest)) throw invalid(`${JSON.stringify(req.digest)} failed validation`);
    return { info: toInfo(await this.store.info(ctx, req.digest)) };
  }

  /**
   * Info, and the blob's bytes when its size is at most `maxData` (the gateway's InfoData,
   * proto/flotilla/content.proto). A blob deleted between the two reads is Info alone.
   */
  async infoData(req: api.InfoRequest, maxData: number, ctx: CallContext): Promise<{ response: api.InfoResponse; data?: Buffer }> {
    const response = await this.info(req, ctx);
    const size = response.info!.size;
    if (size > Math.min(maxData, this.readChunk)) return { response };
    const pieces: Buffer[] = [];
    try {
      for await (const c of this.store.backend.read(req.digest, 0, size, this.readChunk)) pieces.push(c.data as Buffer);
    } catch {
      return { response };
    }
    const data = Buffer.concat(pieces);
    return data.length === size ? { response, data } : { response };
  }

  async update(req: api.UpdateRequest, ctx: CallContext): Promise<api.UpdateResponse> {
    const digest = req.info?.digest ?? '';
    if (digestError(digest)) throw invalid(`${JSON.stringify(digest)} failed validation`);
    const info = await this.store.update(ctx, { digest, labels: req.info?.labels ?? {} }, req.updateMask ?? []);
    return { info: toInfo(info) };
  }

  async *list(req: api.ListContentRequest, ctx: CallContext): AsyncGenerator<api.ListContentResponse> {
    let block: api.Info[] = [];
    for await (const info of this.store.walk(ctx, req.filters)) {
      // containerd's List leaves updated_at at Go's zero time.
      block.push(toInfo(info, false));
      if (block.length >= LIST_BLOCK) {
        yield { info: block };
        block = [];
      }
    }
    if (block.length > 0) yield { info: block };
  }

  async delete(req: api.DeleteContentRequest, ctx: CallContext): Promise<Record<string, never>> {
    const why = digestError(req.digest);
    if (why) throw invalid(why);
    await this.store.delete(ctx, req.digest);
    return {};
  }

  async *read(req: api.ReadContentRequest, ctx: CallContext): AsyncGenerator<api.ReadContentResponse> {
    const why = digestError(req.digest);
    if (why) throw invalid(`${req.digest}: ${why}`);
    const info = await this.store.info(ctx, req.digest);
    const range = readRange(req.offset, req.size, info.size);
    if (!range) throw new ContainerdError(ErrorClass.OutOfRange, `read past object length ${info.size} bytes`);
    const { offset, size } = range;
    if (size === 0) return;
    // containerd numbers the replies' offsets from the start of the read, not of the blob.
    for await (const c of this.store.backend.read(req.digest, offset, size, this.readChunk)) yield { offset: c.offset - offset, data: c.data as Buffer };
  }

  async status(req: api.StatusRequest, ctx: CallContext): Promise<api.StatusResponse> {
    try {
      return { status: toStatus(await this.store.status(ctx, req.ref)) };
    } catch (err) {
      if (err instanceof ContainerdError) throw new ContainerdError(err.errorClass, `could not get status for ref ${JSON.stringify(req.ref)}: ${err.message}`, { cause: err });
      throw err;
    }
  }

  async listStatuses(req: api.ListStatusesRequest, ctx: CallContext): Promise<api.ListStatusesResponse> {
    return { statuses: (await this.store.listStatuses(ctx, req.filters)).map(toStatus) };
  }

  async abort(req: api.AbortRequest, ctx: CallContext): Promise<Record<string, never>> {
    await this.store.abort(ctx, req.ref);
    return {};
  }

  // ---- Write ----

  /** The first message of a Write stream: opens the writer (holding the ref) and answers it. */
  async writeOpen(req: api.WriteContentRequest, ctx: CallContext): Promise<{ session: string; reply: api.WriteContentResponse; done: boolean }> {
    if (!req.ref) throw invalid('first message must have a reference');
    const writer = await this.store.writer(ctx, req.ref, { size: req.total, digest: req.expected });
    const s: WriteSession = {
      id: randomUUID(),
      ref: req.ref,
      writer,
      // gogo's non-nullable timestamps: Go's zero time until a STAT fills them in.
      msg: api.WriteContentResponse.fromPartial({ startedAt: GO_ZERO_TIME, updatedAt: GO_ZERO_TIME }),
      total: req.total,
      expected: req.expected,
      timer: undefined,
      queue: Promise.resolve(),
    };
    this.sessions.set(s.id, s);
    const r = await this.next(s, req, ctx);
    return { session: s.id, ...r };
  }

  /**
   * A later message. An error ends the session, as it ends containerd's stream.
   * `acceptedAt`: when the gateway answered this WRITE on our behalf (pipelined), if it did.
   */
  async writeNext(session: string, req: api.WriteContentRequest, ctx: CallContext, acceptedAt?: number, vouched?: Vouched): Promise<{ reply: api.WriteContentResponse; done: boolean }> {
    const s = this.sessions.get(session);
    if (!s) throw errUnavailable('write session expired or unknown');
    const r = s.queue.then(() => {
      if (!this.sessions.has(session)) throw errUnavailable('write session expired or unknown');
      return this.next(s, req, ctx, acceptedAt, vouched);
    });
    s.queue = r.catch(() => {});
    return r;
  }

  private async next(s: WriteSession, req: api.WriteContentRequest, ctx: CallContext, acceptedAt?: number, vouched?: Vouched): Promise<{ reply: api.WriteContentResponse; done: boolean }> {
    if (s.timer) clearTimeout(s.timer);
    try {
      const done = await this.step(s, req, ctx, acceptedAt, vouched);
      const reply = api.WriteContentResponse.fromPartial(s.msg);
      if (done) await this.writeClose(s.id);
      else s.timer = setTimeout(() => void this.writeClose(s.id), SESSION_IDLE_MS).unref();
      return { reply, done };
    } catch (err) {
      await this.writeClose(s.id);
      throw err;
    }
  }

  /**
   * The client closed its stream: after the steps already received, release the ref; the
   * ingest stays.
   */
  async writeEnd(session: string): Promise<void> {
    const s = this.sessions.get(session);
    if (!s) return;
    await s.queue;
    await this.writeClose(session);
  }

  /** Releases the ref now (the client went away, or the session is done); the ingest stays. */
  async writeClose(session: string): Promise<void> {
    const s = this.sessions.get(session);
    if (!s) return;
    this.sessions.delete(session);
    if (s.timer) clearTimeout(s.timer);
    await s.writer.close();
  }

  /**
   * One iteration of containerd's contentserver Write loop; true when committed.
   * `vouched`: the stream's digest as the gateway hashed it (WriteStep.digest), taken
   * instead of hashing the same bytes again while the ingest is at its offset.
   */
  private async step(s: WriteSession, req: api.WriteContentRequest, ctx: CallContext, acceptedAt?: number, vouched?: Vouched): Promise<boolean> {
    const { msg, writer } = s;
    msg.action = req.action;
    const ws = writer.status();
    msg.offset = ws.offset;
    if (req.expected) {
      s.expected = req.expected;
      const present = await this.store.info(ctx, req.expected).then(() => true, () => false);
      if (present) {
        await writer.close();
        await this.store.abort(ctx, s.ref).catch(() => {});
        throw withClass(ErrorClass.AlreadyExists, `blob with expected digest ${req.expected} exists`);
      }
    }
    if (req.total > 0) s.total = req.total;
    switch (req.action) {
      case api.WriteAction.STAT:
        if (vouched) writer.vouch(vouched);
        await writer.settle();
        msg.digest = writer.digest();
        msg.startedAt = toTimestamp(ws.startedAt);
        msg.updatedAt = toTimestamp(ws.updatedAt);
        msg.total = s.total;
        return false;
      case api.WriteAction.WRITE:
      case api.WriteAction.COMMIT: {
        if (req.offset > 0 && req.offset !== ws.offset) {
          throw withClass(ErrorClass.OutOfRange, `write @${req.offset} must occur at current offset ${ws.offset}`);
        }
        if (req.offset === 0 && ws.offset > 0) {
          await writer.truncate(0);
          msg.offset = 0;
        }
        if (req.data.length > 0) {
          await writer.write(req.data, acceptedAt, vouched);
          msg.offset += req.data.length;
        } else if (vouched) writer.vouch(vouched);
        if (req.action === api.WriteAction.COMMIT) {
          await writer.commit(s.total, s.expected, req.labels);
          msg.digest = writer.digest();
          return true;
        }
        // A write the gateway vouched for may still be running (the disk writer's
        // writeBehind): this reply goes only to the gateway, which answered the client
        // already; a failure reaches the stream with the next step. Anything a client sees
        // (STAT, COMMIT, a lockstep WRITE) waits for every byte.
        if (!(vouched && req.data.length > 0)) await writer.settle();
        msg.digest = writer.digest();
        return false;
      }
      default:
        // containerd answers an unknown action with the status fields alone.
        return false;
    }
  }

  async close(): Promise<void> {
    for (const id of [...this.sessions.keys()]) await this.writeClose(id).catch(() => {});
  }
}
