// The NATS transport. Request/reply for unary calls, NATS micro services for
// discoverability (name, version, stats per endpoint), pull-driven batches for streamed
// replies, plain publish/subscribe for events.
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { connect, headers as natsHeaders, ErrorCode, type NatsConnection, type Service, type Subscription, NatsError } from 'nats';
import {
  ContainerdError, ErrorClass, classOf, errUnavailable, grpcCodeOf, isErrorClass, messageOf, withClass,
} from '@flotilla/errdefs';
import { SpanKind, extractTrace, injectTrace, otelContext, withSpan, type Carrier } from '@flotilla/telemetry';
import { Header, PlainHeaders, type CallContext, type HeaderMap, contextFromHeaders, contextToHeaders, currentContext, runWithContext, toNatsHeaders } from './context.js';
import { DirectLink, DirectLinkError, DirectServer, recycleFrame, type Incoming, type Reply } from './direct.js';
import { BatchReader, StreamCursor } from './framing.js';
import { instanceOfSubject, streamSubject } from './subjects.js';

export interface BusOptions {
  url: string;
  /** Connection name shown by nats-server (e.g. flotilla-content). */
  name: string;
  /** Upper bound for any payload flotilla sends; the server's max_payload lowers it further. */
  maxPayload?: number;
  /** Timeout for a request whose context has no deadline. */
  requestTimeoutMs?: number;
  /** How long an unread stream stays open before the server side drops it. */
  streamIdleMs?: number;
  /**
   * Directory for this process's direct-link socket (see direct.ts). When set, requests
   * pinned to another instance on this host skip nats-server, and this instance offers the
   * same to others. Unset: everything goes through NATS.
   */
  directDir?: string;
}

/**
 * A request body, whole or in pieces (sent as one; pieces save a copy when the request goes
 * over a direct link, e.g. a Write step's header before the client's data).
 */
export type Payload = Uint8Array | readonly Uint8Array[];

/** Returned by a unary handler that holds a call (e.g. Wait) and wants the caller to ask again. */
export const CONTINUE = Symbol('flotilla.continue');

export type UnaryHandler = (data: Uint8Array, ctx: CallContext) => Promise<Uint8Array | typeof CONTINUE>;
/** Yields each message of the reply, or several at once as an array (a page: one step for the batcher). */
export type StreamHandler = (data: Uint8Array, ctx: CallContext) => AsyncIterable<Uint8Array | readonly Uint8Array[]>;

export type EndpointSpec =
  | { method: string; subject: string; unary: UnaryHandler }
  | { method: string; subject: string; stream: StreamHandler };

export interface ServiceSpec {
  /** Micro service name, e.g. flotilla-content. */
  name: string;
  version: string;
  description: string;
  metadata?: Record<string, string>;
  endpoints: EndpointSpec[];
}

// Space kept free in each payload for headers and protocol overhead.
const HEADROOM = 8 * 1024;
/**
 * First batch of a stream for a caller that can take direct links: small, so a large reply
 * moves to the link after one NATS message while a small one still completes in it.
 */
const FIRST_BATCH_DIRECT = 256 * 1024;

const hdrCarrier = (h: HeaderMap): Carrier => ({ get: (k) => h.get(k) || undefined, set: (k, v) => h.set(k, v) });

interface StreamSession {
  cursor: StreamCursor;
  timer: NodeJS.Timeout;
  ctx: CallContext;
}

export class Bus {
  readonly nc: NatsConnection;
  /** Largest batch this bus sends, below the server's max_payload. */
  readonly chunkLimit: number;
  private readonly timeoutMs: number;
  private readonly idleMs: number;
  /** Unique per connection; names subjects that must reach this process only. */
  readonly instance = randomUUID().replaceAll("-", "");
  private readonly sessions = new Map<string, StreamSession>();
  private streamSub?: Subscription;
  private readonly services: Service[] = [];
  /** Handlers by subject, for requests arriving over the direct link. */
  private readonly handlers = new Map<string, (msg: Incoming) => void>();
  private direct?: DirectServer;
  /** Direct links to other instances, by instance id (learned from their replies). */
  private readonly links = new Map<string, DirectLink>();
  /** For subjects that name no instance (svc.*, node.*): the link of the instance that answered one over NATS. */
  private readonly routes = new Map<string, DirectLink>();

  private constructor(nc: NatsConnection, opts: BusOptions) {
    this.nc = nc;
    const serverMax = nc.info?.max_payload ?? 1024 * 1024;
    this.chunkLimit = Math.min(opts.maxPayload ?? serverMax, serverMax) - HEADROOM;
    this.timeoutMs = opts.requestTimeoutMs ?? 120_000;
    this.idleMs = opts.streamIdleMs ?? 60_000;
  }

  static async connect(opts: BusOptions): Promise<Bus> {
    const nc = await connect({
      servers: opts.url,
      name: opts.name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      waitOnFirstConnect: true,
      // nats.js otherwise captures two stack traces per request, a visible share of a call's CPU.
      noAsyncTraces: true,
    });
    const bus = new Bus(nc, opts);
    if (opts.directDir) {
      const file = path.join(opts.directDir, `${opts.name}-${process.pid}.sock`);
      bus.direct = await DirectServer.listen(file, bus.instance, (msg) => bus.onDirect(msg));
    }
    return bus;
  }

  /** This instance's direct-link address (`unix:<path>`), when it offers one. */
  get directAddress(): string | undefined {
    return this.direct?.address;
  }

  private onDirect(msg: Incoming): void {
    const h = this.handlers.get(msg.subject);
    if (h) h(msg);
    else respondError(msg, errUnavailable(`${msg.subject}: no such endpoint on this instance`));
  }

  /**
   * The `Flotilla-Direct` value for a reply to `req`: when it came over NATS from a caller
   * that takes direct links and we offer one (over the link the caller has it already).
   */
  private advertFor(req: Incoming): string | undefined {
    return this.direct && !req.direct && req.headers?.get(Header.DirectOk) ? `${this.instance} ${this.direct.address}` : undefined;
  }

  /** Takes a reply's advert: the instance's link, and the route for `subject` unless it is pinned. */
  private learn(advert: string, subject: string, pinned: boolean): void {
    const sp = advert.indexOf(' ');
    const instance = advert.slice(0, sp);
    const address = advert.slice(sp + 1);
    if (sp <= 0 || instance === this.instance || !address.startsWith('unix:')) return;
    let link = this.links.get(instance);
    if (!link || link.address !== address) {
      link?.close();
      link = new DirectLink(address, instance);
      this.links.set(instance, link);
    }
    if (!pinned) this.routes.set(subject, link);
  }

  // ---- client side ----

  private headersFor(ctx: CallContext): PlainHeaders {
    const h = contextToHeaders(ctx);
    injectTrace(hdrCarrier(h));
    if (this.direct) h.set(Header.DirectOk, '1');
    return h;
  }

  private timeoutFor(ctx: CallContext): number {
    if (ctx.deadline === undefined) return this.timeoutMs;
    const left = ctx.deadline - Date.now();
    if (left <= 0) throw new ContainerdError(ErrorClass.DeadlineExceeded, 'context deadline exceeded');
    return left;
  }

  /**
   * One request, over a direct link when we have one for the subject (the instance a pinned
   * subject names, or the instance that answered this subject before), falling back to NATS
   * when it cannot be reached; else over NATS. Maps transport failures and error replies to
   * containerd errors.
   */
  private async requestOnce(subject: string, data: Payload, h: PlainHeaders, ctx: CallContext, written?: () => void): Promise<Reply> {
    const inst = this.links.size > 0 ? instanceOfSubject(subject) : undefined;
    const link = inst ? this.links.get(inst) : this.routes.get(subject);
    if (link && !link.unreachable) {
      const timeout = this.timeoutFor(ctx);
      try {
        const msg = await link.request(subject, data, h, timeout, () =>
          ctx.deadline !== undefined && Date.now() >= ctx.deadline
            ? new ContainerdError(ErrorClass.DeadlineExceeded, 'context deadline exceeded')
            : errUnavailable(`${subject}: no reply in time`), written);
        throwIfError(msg);
        return msg;
      } catch (err) {
        if (!(err instanceof DirectLinkError)) throw err;
        // The instance went away mid-call, as a NATS request would find no responders.
        // (Not retried over NATS: the request may have taken effect.)
        if (!err.beforeSend) throw errUnavailable(`${subject}: no service is answering`, { cause: err });
      }
    }
    if (link && !inst) this.routes.delete(subject); // unreachable: learn again from NATS
    let msg: Reply;
    try {
      msg = await this.nc.request(subject, isPieces(data) ? Buffer.concat(data) : data, { timeout: this.timeoutFor(ctx), headers: toNatsHeaders(h) });
    } catch (err) {
      if (err instanceof NatsError && err.code === ErrorCode.NoResponders) {
        throw errUnavailable(`${subject}: no service is answering`, { cause: err });
      }
      if (err instanceof NatsError && err.code === ErrorCode.Timeout) {
        if (ctx.deadline !== undefined && Date.now() >= ctx.deadline) {
          throw new ContainerdError(ErrorClass.DeadlineExceeded, 'context deadline exceeded', { cause: err });
        }
        throw errUnavailable(`${subject}: no reply in time`, { cause: err });
      }
      if (err instanceof ContainerdError) throw err;
      throw errUnavailable(`${subject}: ${messageOf(err)}`, { cause: err });
    }
    throwIfError(msg);
    const advert = this.direct ? msg.headers?.get(Header.Direct) : undefined;
    if (advert) this.learn(advert, subject, instanceOfSubject(subject) !== undefined);
    return msg;
  }

  /**
   * Unary request in the current (or given) call context. Replies marked Continue are
   * re-sent until an answer or the deadline: that is how a blocking Wait crosses the bus
   * and survives a restart of the service holding it.
   */
  async request(subject: string, data: Payload, ctx: CallContext = currentContext()): Promise<Uint8Array> {
    for (;;) {
      const msg = await this.requestOnce(subject, data, this.headersFor(ctx), ctx);
      if (msg.headers?.get(Header.Continue)) continue;
      return msg.data;
    }
  }

  /**
   * As request, for a caller that wants `data`'s memory back: `written()` runs once a direct
   * link has handed all of it to the kernel; nothing reads `data` after that. Never over NATS
   * (nats.js may hold the bytes until it flushes): the caller then just drops its memory.
   * Not for subjects that answer Continue, which re-sends the data.
   */
  async requestThen(subject: string, data: Payload, written: () => void, ctx: CallContext = currentContext()): Promise<Uint8Array> {
    const msg = await this.requestOnce(subject, data, this.headersFor(ctx), ctx, written);
    if (msg.headers?.get(Header.Continue)) throw new ContainerdError(ErrorClass.Unknown, `${subject}: a Continue reply to a request that cannot be re-sent`);
    return msg.data;
  }

  /**
   * One request, passing a Continue reply back instead of re-sending: for a service that
   * relays a held call (tasks -> node agent), so the hold reaches the original caller.
   */
  async forward(subject: string, data: Uint8Array, ctx: CallContext = currentContext()): Promise<Uint8Array | typeof CONTINUE> {
    const msg = await this.requestOnce(subject, data, this.headersFor(ctx), ctx);
    return msg.headers?.get(Header.Continue) ? CONTINUE : msg.data;
  }

  /**
   * Streamed request: yields each message of the reply. The server sends one batch per
   * request and we ask for the next only while reading the current one, so a slow reader
   * holds at most two batches in memory.
   */
  async *requestStream(subject: string, data: Uint8Array, ctx: CallContext = currentContext()): AsyncGenerator<Uint8Array> {
    const reader = new BatchReader();
    for await (const batch of this.requestBatches(subject, data, ctx)) yield* reader.read(batch);
    if (reader.incomplete) throw errUnavailable(`${subject}: stream ended inside a message`);
  }

  /**
   * Streamed request, batch by batch as the server sent them (records as framing.ts lays
   * them out; a message may continue into the next batch): for a caller that re-frames
   * whole batches instead of handling messages one by one. The next batch is asked for
   * while the caller holds the current one.
   */
  async *requestBatches(subject: string, data: Uint8Array, ctx: CallContext = currentContext()): AsyncGenerator<Uint8Array> {
    let msg: Reply = await this.requestOnce(subject, data, this.headersFor(ctx), ctx);
    let done = false;
    try {
      for (;;) {
        const end = !!msg.headers?.get(Header.StreamEnd);
        const id = msg.headers?.get(Header.Stream);
        const next = msg.headers?.get(Header.StreamSubject);
        let pending: Promise<Reply> | undefined;
        if (!end) {
          if (!id || !next) throw errUnavailable(`${subject}: malformed stream reply`);
          const h = this.headersFor(ctx);
          h.set(Header.Stream, id);
          pending = this.requestOnce(next, new Uint8Array(0), h, ctx);
          pending.catch(() => {}); // observed below
        }
        if (msg.data.byteLength > 0) yield msg.data;
        if (!pending) {
          done = true;
          return;
        }
        msg = await pending;
      }
    } finally {
      if (!done) this.cancelStream(msg);
    }
  }

  /**
   * `batch`, from requestBatches, is referenced nowhere any more (every view of it written
   * out): its memory may take a later reply that came over a direct link. Optional; see
   * recycleFrame (direct.ts).
   */
  recycleBatch(batch: Uint8Array): void {
    recycleFrame(batch);
  }

  private cancelStream(last: Reply): void {
    const id = last.headers?.get(Header.Stream);
    const next = last.headers?.get(Header.StreamSubject);
    if (!id || !next || last.headers?.get(Header.StreamEnd)) return;
    const h = natsHeaders();
    h.set(Header.Stream, id);
    h.set(Header.StreamCancel, '1');
    this.nc.publish(next, new Uint8Array(0), { headers: h });
  }

  publish(subject: string, data: Uint8Array, ctx: CallContext = currentContext()): void {
    this.nc.publish(subject, data, { headers: toNatsHeaders(this.headersFor(ctx)) });
  }

  subscribe(subject: string, onMsg: (data: Uint8Array, ctx: CallContext, subject: string) => void): Subscription {
    return this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (!err) onMsg(msg.data, contextFromHeaders(msg.headers), msg.subject);
      },
    });
  }

  // ---- server side ----

  /** Registers a NATS micro service with one endpoint per method (queue group: any replica answers). */
  async addService(spec: ServiceSpec): Promise<Service> {
    const srv = await this.nc.services.add({
      name: spec.name,
      version: spec.version,
      description: spec.description,
      metadata: spec.metadata,
    });
    for (const ep of spec.endpoints) {
      srv.addEndpoint(ep.method, {
        subject: ep.subject,
        handler: (err, msg) => {
          if (err) return;
          void this.dispatch(spec.name, ep, msg);
        },
      });
      this.handlers.set(ep.subject, (msg) => void this.dispatch(spec.name, ep, msg));
    }
    if (spec.endpoints.some((ep) => 'stream' in ep)) this.ensureStreamEndpoint();
    this.services.push(srv);
    return srv;
  }

  private async dispatch(service: string, ep: EndpointSpec, msg: Incoming): Promise<void> {
    const ctx = contextFromHeaders(msg.headers);
    const parent = msg.headers ? extractTrace(hdrCarrier(msg.headers), otelContext.active()) : otelContext.active();
    await withSpan(`${service}/${ep.method}`, SpanKind.SERVER, parent, { 'rpc.system': 'nats', 'rpc.method': ep.method }, () =>
      runWithContext(ctx, async () => {
        try {
          if ('unary' in ep) {
            const out = await ep.unary(msg.data, ctx);
            const advert = this.advertFor(msg);
            if (out === CONTINUE || advert) {
              const h = natsHeaders();
              if (out === CONTINUE) h.set(Header.Continue, '1');
              if (advert) h.set(Header.Direct, advert);
              msg.respond(out === CONTINUE ? new Uint8Array(0) : out, { headers: h });
            } else {
              msg.respond(out);
            }
          } else {
            const cursor = new StreamCursor(ep.stream(msg.data, ctx)[Symbol.asyncIterator](), this.chunkLimit);
            // Over NATS to a caller that will continue over the link: a small first batch.
            const first = this.advertFor(msg) ? FIRST_BATCH_DIRECT : undefined;
            await this.sendBatch(msg, cursor, ctx, randomUUID(), first);
          }
        } catch (e) {
          // Unclassified errors are bugs or environment failures: keep their stack.
          if (classOf(e) === ErrorClass.Unknown) {
            process.stderr.write(JSON.stringify({ time: new Date().toISOString(), msg: 'handler failed', endpoint: `${service}/${ep.method}`, error: e instanceof Error ? e.stack : String(e) }) + '\n');
          }
          respondError(msg, e);
        }
      }),
    ).catch(() => {});
  }

  private ensureStreamEndpoint(): void {
    if (this.streamSub) return;
    const subject = streamSubject(this.instance);
    this.streamSub = this.nc.subscribe(subject, { callback: (err, msg) => err || this.onStreamContinue(msg) });
    this.handlers.set(subject, (msg) => this.onStreamContinue(msg));
  }

  private onStreamContinue(msg: Incoming): void {
    const id = msg.headers?.get(Header.Stream) ?? '';
    const s = this.sessions.get(id);
    if (!s) {
      if (msg.reply) respondError(msg, errUnavailable(`stream ${id}: expired or unknown`));
      return;
    }
    this.sessions.delete(id);
    clearTimeout(s.timer);
    if (msg.headers?.get(Header.StreamCancel)) {
      void s.cursor.cancel();
      return;
    }
    void runWithContext(s.ctx, () => this.sendBatch(msg, s.cursor, s.ctx, id)).catch((e) => respondError(msg, e));
  }

  /** Replies with the next batch (of at most `limit` bytes); keeps the session while more may follow. */
  private async sendBatch(msg: Incoming, cursor: StreamCursor, ctx: CallContext, id: string, limit?: number): Promise<void> {
    let next: { batch: Uint8Array; end: boolean };
    try {
      next = await cursor.next(limit);
    } catch (e) {
      respondError(msg, e);
      return;
    }
    const h = natsHeaders();
    const advert = this.advertFor(msg);
    if (advert) h.set(Header.Direct, advert);
    if (next.end) {
      h.set(Header.StreamEnd, '1');
    } else {
      h.set(Header.Stream, id);
      h.set(Header.StreamSubject, streamSubject(this.instance));
      this.sessions.set(id, {
        cursor,
        ctx,
        timer: setTimeout(() => {
          this.sessions.delete(id);
          void cursor.cancel();
        }, this.idleMs).unref(),
      });
    }
    // Over a direct link the batch's memory comes back to the cursor once written.
    if (msg.respondThen) msg.respondThen(next.batch, { headers: h }, () => cursor.reuse(next.batch));
    else msg.respond(next.batch, { headers: h });
  }

  async close(): Promise<void> {
    for (const s of this.services) await s.stop().catch(() => {});
    for (const [, s] of this.sessions) {
      clearTimeout(s.timer);
      void s.cursor.cancel();
    }
    this.sessions.clear();
    for (const l of this.links.values()) l.close();
    await this.direct?.close();
    await this.nc.drain().catch(() => {});
  }
}

function respondError(msg: Incoming, err: unknown): void {
  if (!msg.reply) return;
  const cls = classOf(err);
  const h = natsHeaders();
  h.set(Header.ErrorClass, cls);
  h.set(Header.ErrorCode, String(grpcCodeOf(cls)));
  // Header values must not carry line breaks.
  h.set(Header.Error, messageOf(err).replace(/[\r\n]+/g, ' '));
  msg.respond(new Uint8Array(0), { headers: h });
}

function isPieces(p: Payload): p is readonly Uint8Array[] {
  return Array.isArray(p);
}

function throwIfError(msg: Reply): void {
  const h = msg.headers;
  if (!h) return;
  const text = h.get(Header.Error);
  const cls = h.get(Header.ErrorClass);
  if (!text && !cls) return;
  throw withClass(cls && isErrorClass(cls) ? cls : ErrorClass.Unknown, text || cls || 'unknown');
}
