// The gateway: containerd 1.6's gRPC API on a unix socket, translated call by call to NATS.
// It carries namespace, lease, deadline, node and trace context into bus headers and maps
// containerd error classes back to gRPC status codes. Requests and replies pass through as
// the client's own protobuf bytes; only content Write is decoded, to frame it for the bus,
// and the envelopes of events Subscribe, which the gateway filters from the bus itself (events.ts).
// gRPC itself is @flotilla/grpc's server (not grpc-js: see libs/grpc/src/server.ts).
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomUUID, type Hash } from 'node:crypto';
import * as api from '@flotilla/api';
import { canonicalDigester, digestOf, preciseNow, readRange } from '@flotilla/api';
import type { ServiceDefinition } from '@flotilla/api';
import { Bus, type CallContext } from '@flotilla/bus';
import { ContainerdError, ErrorClass, GrpcCode, classOf, grpcCodeOf, messageOf, errUnavailable, isUnavailable } from '@flotilla/errdefs';
import { GrpcError, GrpcServer, type BidiCall, type Call, type Status, type StreamingCall } from '@flotilla/grpc';
import { SpanKind, extractTrace, openSpan, otelContext, withSpan, type Carrier } from '@flotilla/telemetry';
import { routeFor, type Route } from './routes.js';
import { HEALTH_SERVICE, decodeCheckRequest, encodeCheckResponse, ServingStatus } from './health.js';
import { listPlugins } from './introspection.js';
import { GrpcFramer } from './framer.js';
import { subscribe } from './events.js';

export interface GatewayOptions {
  bus: Bus;
  socket: string;
  nodeId: string;
  /** Directory for the gateway's own state (its server UUID). */
  stateDir: string;
  version: string;
  revision: string;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

const NAMESPACE_KEY = 'containerd-namespace';
const LEASE_KEY = 'containerd-lease';
/** containerd's gRPC message limit (16 MiB), for both directions. */
const MAX_MESSAGE = 16 << 20;
/**
 * HTTP/2 receive windows the gateway offers its clients. With HTTP/2's default of 64 KiB per
 * stream and per connection, a client sending a 1 MiB message (ctr's content writes) stalls
 * for ~16 WINDOW_UPDATEs. containerd's grpc-go grows its windows to up to 16 MiB by measuring
 * the connection; these are fixed sizes of that order. They bound what one connection can
 * make the gateway buffer.
 */
const STREAM_WINDOW = 4 << 20;
const CONNECTION_WINDOW = 16 << 20;

const SERVICES: ServiceDefinition[] = [
  api.containers.ContainersDefinition, api.content.ContentDefinition, api.diff.DiffDefinition,
  api.events.EventsDefinition, api.images.ImagesDefinition, api.introspection.IntrospectionDefinition,
  api.leases.LeasesDefinition, api.namespaces.NamespacesDefinition, api.snapshots.SnapshotsDefinition,
  api.tasks.TasksDefinition, api.version.VersionDefinition,
] as unknown as ServiceDefinition[];

function headerCarrier(call: Call): Carrier {
  return { get: (k) => call.header(k), set: () => {} };
}

/**
 * The first value of a header, as containerd reads it (`md.Get(key)[0]`): a client that sends
 * the header twice (the Go client's WithNamespace appends) means the first.
 */
function firstValue(call: Call, key: string): string | undefined {
  return call.header(key) || undefined;
}

/** The gRPC status a failure ends its call with: containerd's code for its error class. */
function toStatus(err: unknown): Status {
  if (err instanceof GrpcError) return { code: err.code, message: err.message };
  return { code: grpcCodeOf(classOf(err)), message: messageOf(err) };
}

/**
 * WriteStep{session, request: <the client's WriteContentRequest bytes>} built around the
 * client's message without decoding and re-encoding it: the step's header, then the
 * client's bytes (the bus sends the pieces as one message).
 */
function rawWriteStep(session: string, req: Buffer, acceptedAt?: number, vouched?: Vouched): Buffer[] {
  const s = Buffer.byteLength(session, 'utf8');
  const d = vouched ? Buffer.byteLength(vouched.digest, 'utf8') : 0;
  const head = Buffer.allocUnsafe(
    (s ? 1 + varintLen(s) + s : 0) + (acceptedAt ? 9 : 0) + (d ? 1 + varintLen(d) + d + 1 + varintLen(vouched!.offset) : 0) + 1 + varintLen(req.length),
  );
  let p = 0;
  if (s) {
    head[p++] = 0x0a; // field 1, length-delimited
    p = putVarint(head, p, s);
    p += head.write(session, p, 'utf8');
  }
  if (acceptedAt) {
    head[p++] = 0x21; // field 4, 64-bit (double)
    p = head.writeDoubleLE(acceptedAt, p);
  }
  if (d) {
    head[p++] = 0x2a; // field 5, length-delimited
    p = putVarint(head, p, d);
    p += head.write(vouched!.digest, p, 'utf8');
    head[p++] = 0x30; // field 6, varint
    p = putVarint(head, p, vouched!.offset);
  }
  head[p++] = 0x12; // field 2, length-delimited
  putVarint(head, p, req.length);
  return [head, req];
}

/** A WriteStep's digest and digest_offset: what the gateway hashed of the stream. */
interface Vouched {
  digest: string;
  offset: number;
}

function varintLen(n: number): number {
  let l = 1;
  for (; n >= 0x80; n = Math.floor(n / 128)) l++;
  return l;
}

function putVarint(b: Buffer, p: number, n: number): number {
  for (; n >= 0x80; n = Math.floor(n / 128)) b[p++] = (n % 128) | 0x80;
  b[p++] = n;
  return p;
}

/** Unconfirmed bytes of a pipelined content Write (see contentWrite). */
const PIPELINE_BYTES = 8 << 20;

/** One hop of a held call (tasks Wait); the tasks service answers Continue well within it. */
const HELD_HOP_MS = 15_000;

/** Largest blob a content Info brings back for the Read that follows it (see contentInfo). */
const HELD_BLOB_MAX = 64 * 1024;
/** How long such a blob waits for that Read. */
const HELD_BLOB_MS = 1000;

/** A small blob an Info fetched, for the next call on its connection if that is a Read of it. */
interface HeldBlob {
  /** The stream id the Read must have: the Info's + 2, the client's next call on the connection. */
  next: number;
  namespace: string | undefined;
  digest: string;
  data: Buffer;
  at: number;
}

export class Gateway {
  private server?: GrpcServer;
  private uuid = '';
  /** Whether the NATS connection is up (health answers NOT_SERVING while it is not). */
  private natsUp = true;
  /** Per connection: the blob the last content Info brought (see contentInfo). */
  private readonly heldBlobs = new WeakMap<object, HeldBlob>();
  constructor(private readonly opts: GatewayOptions) {}

  /**
   * A held call (tasks Wait): asked again on Continue, and also when the service holding it
   * could not be reached or died holding it (a hop longer than HELD_HOP_MS), until the
   * client's own deadline. So a Wait outlives restarts of the tasks service and node agent.
   */
  private async held(subject: string, req: Buffer, ctx: CallContext): Promise<Buffer> {
    const { bus } = this.opts;
    for (;;) {
      const hop: CallContext = { ...ctx, deadline: Math.min(ctx.deadline ?? Infinity, Date.now() + HELD_HOP_MS) };
      try {
        const out = await bus.forward(subject, req, hop);
        if (typeof out !== 'symbol') return Buffer.from(out);
      } catch (err) {
        const transient = isUnavailable(err) || classOf(err) === ErrorClass.DeadlineExceeded;
        if (!transient || (ctx.deadline !== undefined && Date.now() + 500 >= ctx.deadline)) throw err;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  private contextOf(call: Call): CallContext {
    const ctx: CallContext = { node: this.opts.nodeId };
    const ns = firstValue(call, NAMESPACE_KEY);
    if (ns) ctx.namespace = ns;
    const lease = firstValue(call, LEASE_KEY);
    if (lease) ctx.lease = lease;
    if (call.deadline !== undefined) ctx.deadline = call.deadline;
    return ctx;
  }

  /** Runs a handler inside a server span continuing the client's trace. */
  private traced<T>(call: Call, fn: () => Promise<T>): Promise<T> {
    const parent = extractTrace(headerCarrier(call), otelContext.active());
    return withSpan(call.path, SpanKind.SERVER, parent, { 'rpc.system': 'grpc', 'rpc.method': call.path }, fn);
  }

  private unary(server: GrpcServer, pathName: string, handler: (req: Buffer, ctx: CallContext, call: Call) => Promise<Uint8Array>): void {
    server.unary(pathName, (req, call) => {
      const ctx = this.contextOf(call);
      return this.traced(call, () => handler(req, ctx, call));
    });
  }

  /**
   * Content Info, asked of the content service as InfoData: a blob of at most HELD_BLOB_MAX
   * comes back with its info and is held for the connection's next call. A client reads a
   * blob through a ReaderAt, which is an Info and then a Read of the same digest
   * (containerd's content proxy; ctr reads manifests and configs so, ten times per `ctr
   * run`); heldRead answers that Read from the held bytes when it is that next call,
   * within HELD_BLOB_MS: as containerd's own local ReaderAt keeps reading the file it
   * opened. Any other call in between, or a later one, goes to the content service.
   */
  private contentInfo(subject: string): (req: Buffer, ctx: CallContext, call: Call) => Promise<Uint8Array> {
    return async (req, ctx, call) => {
      const maxData = Math.min(HELD_BLOB_MAX, this.opts.bus.chunkLimit >> 1);
      const reply = api.flotillaContent.InfoDataReply.decode(await this.opts.bus.request(subject, api.flotillaContent.InfoDataRequest.encode({ request: req, maxData }).finish(), ctx));
      if (reply.hasData) this.heldBlobs.set(call.connection, { next: call.id + 2, namespace: ctx.namespace, digest: reply.digest, data: reply.data, at: Date.now() });
      return reply.response;
    };
  }

  /**
   * The replies to a content Read from the blob the previous call's Info brought (see
   * contentInfo), exactly as the content service would send them (one message: its chunks
   * are larger than HELD_BLOB_MAX); undefined when the Read must go to the service.
   */
  private heldRead(req: Buffer, call: Call, ctx: CallContext): Uint8Array[] | undefined {
    const held = this.heldBlobs.get(call.connection);
    if (!held) return undefined;
    this.heldBlobs.delete(call.connection);
    if (held.next !== call.id || held.namespace !== ctx.namespace || Date.now() - held.at > HELD_BLOB_MS) return undefined;
    let r: api.content.ReadContentRequest;
    try {
      r = api.content.ReadContentRequest.decode(req);
    } catch {
      return undefined; // malformed: the service's InvalidArgument
    }
    const range = readRange(r.offset, r.size, held.data.length);
    // A bad digest or an offset past the end: the service's errors, from the service.
    if (r.digest !== held.digest || !range) return undefined;
    if (range.size === 0) return [];
    return [api.content.ReadContentResponse.encode({ offset: 0, data: held.data.subarray(range.offset, range.offset + range.size) }).finish()];
  }

  /**
   * A server stream relayed batch by batch: a bus batch of whole messages becomes gRPC frames
   * in place (framer.ts), so a 10k-container ListStream's 10,000 messages arrive in a few bus
   * batches and leave as a few writes, each batch's memory given back once written.
   * `local` may answer the call instead (heldRead).
   */
  private serverStream(server: GrpcServer, pathName: string, subject: string, local?: (req: Buffer, call: Call, ctx: CallContext) => Uint8Array[] | undefined): void {
    server.serverStream(pathName, (req, call) => {
      const ctx = this.contextOf(call);
      return this.traced(call, async () => {
        const answer = local?.(req, call, ctx);
        if (answer) {
          for (const m of answer) call.write(m);
          return;
        }
        const framer = new GrpcFramer(MAX_MESSAGE);
        // Batches whose tail (part of a message) the framer still kept at their push.
        let held: Uint8Array[] = [];
        for await (const batch of this.opts.bus.requestBatches(subject, req, ctx)) {
          const pieces = framer.push(batch);
          // Once the last frames of a batch are written (socket writes complete in order:
          // every earlier batch's too), the memory of the batches the framer no longer
          // holds a part of can take later batches.
          const done = [...held, batch].filter((b) => !framer.holds(b));
          held = [...held, batch].filter((b) => framer.holds(b));
          const free = done.length ? () => done.forEach((b) => this.opts.bus.recycleBatch(b)) : undefined;
          for (let i = 0; i < pieces.length; i++) {
            if (call.cancelled) return;
            const piece = pieces[i]!;
            const more = Buffer.isBuffer(piece) ? call.writeFrames(piece, i === pieces.length - 1 ? free : undefined) : call.write(piece.oversize);
            if (!more && !(await call.drained())) return;
          }
        }
        if (framer.incomplete) throw errUnavailable(`${subject}: stream ended inside a message`);
      });
    });
  }

  /**
   * Content Write: each client message becomes one WriteStep on the bus; messages with
   * more data than one bus payload are cut into consecutive WRITE steps at increasing
   * offsets, which containerd's Write semantics make equivalent to the single message.
   *
   * Plain WRITE messages of a stream the gateway has seen from offset 0 are pipelined: the
   * gateway answers the client at once (the offset it will reach, and the running digest it
   * computes itself, exactly what the content service would answer) and sends the step on,
   * with up to PIPELINE_BYTES unconfirmed. Everything else (STAT, COMMIT, expected digests,
   * odd offsets, resumed ingests) first waits for the steps in flight and goes in lockstep.
   * A pipelined step that fails fails the stream at the client's next message, as
   * containerd's own buffered writers report errors late; nothing is committed without the
   * content service's own answer to the COMMIT.
   */
  private contentWrite(): (call: BidiCall) => Promise<void> {
    const { bus } = this.opts;
    const WA = api.content.WriteAction;
    return async (call) => {
      const ctx = this.contextOf(call);
      // One server span for the whole stream; each step's bus request runs inside it.
      const span = openSpan(call.path, SpanKind.SERVER, extractTrace(headerCarrier(call), otelContext.active()), { 'rpc.system': 'grpc', 'rpc.method': call.path });
      let session = '';
      let next = '';
      // Pipelining state: the last response the content service sent, the offset the
      // stream reaches once every step in flight lands, and the digest of bytes 0..offset
      // (undefined while the gateway has not seen the stream from offset 0).
      let last: api.content.WriteContentResponse | undefined;
      let offset = 0;
      let hash: Hash | undefined;
      const inflight: { bytes: number; done: Promise<void> }[] = [];
      let inflightBytes = 0;
      let asyncError: unknown;
      const closeSession = async () => {
        if (!session) return;
        const s = session;
        session = '';
        const step = api.flotillaContent.WriteStep.encode({ session: s, request: undefined, close: true, acceptedAt: 0, digest: '', digestOffset: 0 }).finish();
        await bus.request(next, step, ctx).catch(() => {});
      };
      const send = async (req: api.content.WriteContentRequest | Buffer, acceptedAt?: number, written?: () => void, vouched?: Vouched): Promise<api.flotillaContent.WriteStepReply> => {
        const step = Buffer.isBuffer(req)
          ? rawWriteStep(session, req, acceptedAt, vouched)
          : api.flotillaContent.WriteStep.encode({ session, request: req, close: false, acceptedAt: 0, digest: '', digestOffset: 0 }).finish();
        const subject = session ? next : api_subject('Write');
        const reply = api.flotillaContent.WriteStepReply.decode(await (written ? bus.requestThen(subject, step, written, ctx) : bus.request(subject, step, ctx)));
        if (!session) {
          session = reply.session;
          next = reply.sessionSubject;
        }
        return reply;
      };
      /** Waits for every step in flight; throws the first one's failure. */
      const drain = async () => {
        while (inflight.length > 0) await inflight[0]!.done;
        if (asyncError !== undefined) throw asyncError;
      };
      const api_subject = (m: string) => routeFor(api.content.ContentDefinition.fullName, this.opts.nodeId)!(m);
      const pipelined = async (buf: Buffer, req: api.content.WriteContentRequest) => {
        while (inflight.length > 0 && inflightBytes + req.data.length > PIPELINE_BYTES) await inflight[0]!.done;
        if (asyncError !== undefined) throw asyncError;
        if (req.offset === 0 && offset > 0) {
          // containerd truncates on a write at offset 0.
          offset = 0;
          hash = canonicalDigester();
        }
        // Answer first, then forward: the answer is what the client waits for, and handing
        // 1 MiB to the content service's socket would delay it. Its time stamp is the
        // moment the client learns the write is done: the ingest's updated_at.
        hash!.update(req.data);
        offset += req.data.length;
        const digest = digestOf(hash!);
        call.write(api.content.WriteContentResponse.encode({ ...last!, action: WA.WRITE, offset, digest }).finish());
        const entry = { bytes: req.data.length, done: Promise.resolve() };
        // Once the step is on its way its bytes are needed nowhere: their memory takes a
        // later message (req.data was hashed above; nothing else keeps a view of buf). The
        // digest goes with it, so the content service need not hash the bytes again.
        entry.done = send(buf, preciseNow(), () => call.recycle(buf), { digest, offset }).then(
          (reply) => {
            if (reply.done) asyncError ??= new ContainerdError(ErrorClass.Unknown, 'content write: session ended on a WRITE');
          },
          (err) => {
            asyncError ??= err;
          },
        ).finally(() => {
          inflight.splice(inflight.indexOf(entry), 1);
          inflightBytes -= entry.bytes;
        });
        inflight.push(entry);
        inflightBytes += entry.bytes;
      };
      /** One client message; true once the content service has ended the session (a COMMIT). */
      const handle = async (buf: Buffer): Promise<boolean> => {
        const req = api.content.WriteContentRequest.decode(buf);
        const limit = bus.chunkLimit - 4096;
        if (hash && last && session && req.action === WA.WRITE && !req.expected && req.data.length > 0 && req.data.length <= limit && (req.offset === offset || req.offset === 0)) {
          await pipelined(buf, req);
          return false;
        }
        await drain();
        let reply: api.flotillaContent.WriteStepReply;
        if (req.data.length > limit && req.action !== WA.STAT) {
          hash = undefined; // not tracked through cut messages: lockstep from here on
          // Leading pieces as plain writes; the last piece carries the original action.
          let off = 0;
          let offset = req.offset;
          while (req.data.length - off > limit) {
            const piece = { ...req, action: WA.WRITE, offset, data: req.data.subarray(off, off + limit), labels: {} };
            if (off > 0) piece.expected = '';
            await send(piece);
            off += limit;
            offset = offset + limit;
          }
          reply = await send({ ...req, offset, data: req.data.subarray(off) });
        } else {
          // The client's own bytes as the step's request: no re-encoding of the data. A
          // step without data (STAT, the COMMIT after pipelined writes) carries the digest
          // of what the gateway has hashed, which the content service may not have.
          const vouched = hash && req.data.length === 0 && (req.action === WA.STAT || req.action === WA.COMMIT) ? { digest: digestOf(hash), offset } : undefined;
          reply = await send(buf, undefined, undefined, vouched);
          if (req.action === WA.STAT && reply.response?.offset === 0) hash = canonicalDigester();
          else if (hash && (req.action === WA.WRITE || req.action === WA.COMMIT)) {
            if (req.offset === 0) hash = canonicalDigester();
            hash.update(req.data);
            // Stop pipelining if the gateway's view ever differs from the content service's.
            if (reply.response?.digest !== digestOf(hash)) hash = undefined;
          }
        }
        last = reply.response!;
        offset = last.offset;
        call.write(api.content.WriteContentResponse.encode(last).finish());
        if (reply.done) session = '';
        return reply.done;
      };
      try {
        await otelContext.with(span.context, async () => {
          for (let buf = await call.read(); buf; buf = await call.read()) {
            if (await handle(buf)) return;
          }
          // The client closed its stream: the content service closes the session after the
          // steps still in flight (a client that closed its stream reads no more answers, as
          // with containerd).
          await closeSession();
        });
        span.end();
      } catch (err) {
        // Also a cancelled call (read() throws): the session is closed, the ingest stays.
        span.end(err);
        void closeSession();
        throw err;
      }
    };
  }

  /** Registers every method of a forwarded service: each becomes a bus call to `route(method)`. */
  private forward(server: GrpcServer, def: ServiceDefinition, route: Route): void {
    for (const m of Object.values(def.methods)) {
      const pathName = `/${def.fullName}/${m.name}`;
      const subject = route(m.name);
      if (m.requestStream) {
        if (def.fullName === api.content.ContentDefinition.fullName && m.name === 'Write') server.bidi(pathName, this.contentWrite());
        continue;
      }
      const content = def.fullName === api.content.ContentDefinition.fullName;
      if (def.fullName === api.tasks.TasksDefinition.fullName && m.name === 'Wait') this.unary(server, pathName, (req, ctx) => this.held(subject, req, ctx));
      else if (content && m.name === 'Info') this.unary(server, pathName, this.contentInfo(route('InfoData')));
      else if (content && m.name === 'Read') this.serverStream(server, pathName, subject, (req, call, ctx) => this.heldRead(req, call, ctx));
      else if (def.fullName === api.events.EventsDefinition.fullName && m.name === 'Subscribe') {
        server.serverStream(pathName, (req, call) => this.traced(call, () => subscribe(this.opts.bus, req, call)));
      }
      else if (m.responseStream) this.serverStream(server, pathName, subject);
      else this.unary(server, pathName, (req, ctx) => this.opts.bus.request(subject, req, ctx));
    }
  }

  /** Services the gateway answers itself: version, introspection and health. */
  private local(server: GrpcServer, def: ServiceDefinition): void {
    const { version: V, introspection: I } = api;
    if (def.fullName === V.VersionDefinition.fullName) {
      this.unary(server, `/${def.fullName}/Version`, async () => V.VersionResponse.encode({ version: this.opts.version, revision: this.opts.revision }).finish());
    } else if (def.fullName === I.IntrospectionDefinition.fullName) {
      this.unary(server, `/${def.fullName}/Plugins`, async (req) => {
        const r = I.PluginsRequest.decode(req);
        const plugins = await listPlugins(this.opts.bus, this.opts.nodeId, r.filters);
        return I.PluginsResponse.encode({ plugins }).finish();
      });
      this.unary(server, `/${def.fullName}/Server`, async () => I.ServerResponse.encode({ uuid: this.uuid }).finish());
    }
  }

  private health(server: GrpcServer): void {
    const status = () => (this.opts.bus.nc.isClosed() || !this.natsUp ? ServingStatus.NOT_SERVING : ServingStatus.SERVING);
    server.unary(`/${HEALTH_SERVICE}/Check`, async (req) => {
      const { service } = decodeCheckRequest(req);
      if (service && service !== 'containerd' && !service.startsWith('containerd.')) throw new GrpcError(GrpcCode.NotFound, 'unknown service');
      return encodeCheckResponse(status());
    });
    // One answer, then the stream stays open until the client leaves.
    server.serverStream(`/${HEALTH_SERVICE}/Watch`, async (_req, call: StreamingCall) => {
      call.write(encodeCheckResponse(status()));
      await new Promise<void>((resolve) => call.onCancel(resolve));
    });
  }

  async start(): Promise<void> {
    const { socket, stateDir } = this.opts;
    void (async () => {
      for await (const s of this.opts.bus.nc.status()) {
        if (s.type === 'disconnect') this.natsUp = false;
        else if (s.type === 'reconnect') this.natsUp = true;
      }
    })().catch(() => {});
    await fs.mkdir(stateDir, { recursive: true });
    const uuidFile = path.join(stateDir, 'uuid');
    this.uuid = (await fs.readFile(uuidFile, 'utf8').catch(() => '')).trim();
    if (!this.uuid) {
      this.uuid = randomUUID();
      await fs.writeFile(uuidFile, this.uuid);
    }
    const server = new GrpcServer({
      maxReceiveMessage: MAX_MESSAGE,
      maxSendMessage: MAX_MESSAGE,
      streamWindow: STREAM_WINDOW,
      connectionWindow: CONNECTION_WINDOW,
      statusOf: toStatus,
    });
    for (const def of SERVICES) {
      const route = routeFor(def.fullName, this.opts.nodeId);
      if (route) this.forward(server, def, route);
      else this.local(server, def);
    }
    this.health(server);
    await fs.mkdir(path.dirname(socket), { recursive: true });
    await server.listen(socket);
    await fs.chmod(socket, 0o660);
    this.server = server;
  }

  async stop(): Promise<void> {
    const s = this.server;
    if (!s) return;
    await s.close(3000);
    await fs.rm(this.opts.socket, { force: true });
  }
}

export { ContainerdError, ErrorClass, errUnavailable, STREAM_WINDOW, CONNECTION_WINDOW };
