// The gateway: containerd 1.6's gRPC API on a unix socket, translated call by call to NATS.
// It carries namespace, lease, deadline, node and trace context into bus headers and maps
// containerd error classes back to gRPC status codes. Requests and replies pass through as
// the client's own protobuf bytes; only content Write is decoded, to frame it for the bus.
import fs from 'node:fs/promises';
import type { Http2Server, ServerHttp2Session } from 'node:http2';
import path from 'node:path';
import { randomUUID, type Hash } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import * as api from '@flotilla/api';
import { canonicalDigester, digestOf, preciseNow } from '@flotilla/api';
import type { ServiceDefinition } from '@flotilla/api';
import { Bus, type CallContext } from '@flotilla/bus';
import { ContainerdError, ErrorClass, classOf, grpcCodeOf, messageOf, errUnavailable, isUnavailable } from '@flotilla/errdefs';
import { SpanKind, extractTrace, openSpan, otelContext, withSpan, type Carrier } from '@flotilla/telemetry';
import { routeFor, type Route } from './routes.js';
import { decodeCheckRequest, encodeCheckResponse, healthDefinition, ServingStatus } from './health.js';
import { listPlugins } from './introspection.js';
import { GrpcFramer, MessageWriter } from './stream-writer.js';

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
 * HTTP/2 receive windows the gateway offers its clients. Node's default is 64 KiB per stream
 * and per connection, so a client sending a 1 MiB message (ctr's content writes) stalls for
 * ~16 WINDOW_UPDATEs, each one a turn of the gateway's event loop. containerd's grpc-go grows
 * its windows to up to 16 MiB by measuring the connection; these are fixed sizes of that order.
 * They bound what one connection can make the gateway buffer.
 */
const STREAM_WINDOW = 4 << 20;
const CONNECTION_WINDOW = 16 << 20;

const SERVICES: ServiceDefinition[] = [
  api.containers.ContainersDefinition, api.content.ContentDefinition, api.diff.DiffDefinition,
  api.events.EventsDefinition, api.images.ImagesDefinition, api.introspection.IntrospectionDefinition,
  api.leases.LeasesDefinition, api.namespaces.NamespacesDefinition, api.snapshots.SnapshotsDefinition,
  api.tasks.TasksDefinition, api.version.VersionDefinition,
] as unknown as ServiceDefinition[];

const identity = (b: Buffer) => b;

function rawDefinition(def: ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
  for (const m of Object.values(def.methods)) {
    out[m.name] = {
      path: `/${def.fullName}/${m.name}`,
      requestStream: m.requestStream,
      responseStream: m.responseStream,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    };
  }
  return out;
}

function metadataCarrier(md: grpc.Metadata): Carrier {
  return { get: (k) => (md.get(k)[0] as string | undefined) ?? undefined, set: () => {} };
}

/**
 * The first value of a header, as containerd reads it. A client that sends the header twice
 * (the Go client's WithNamespace appends) reaches grpc-js as one comma-joined value;
 * namespaces and lease ids cannot contain commas, so the first element is the first value.
 */
function firstValue(md: grpc.Metadata, key: string): string | undefined {
  const v = md.get(key)[0];
  if (typeof v !== 'string') return undefined;
  return v.split(',')[0]!.trim() || undefined;
}

function toStatus(err: unknown): Partial<grpc.StatusObject> {
  const cls = classOf(err);
  return { code: grpcCodeOf(cls) as number as grpc.status, details: messageOf(err) };
}

/**
 * WriteStep{session, request: <the client's WriteContentRequest bytes>} built around the
 * client's message without decoding and re-encoding it: the step's header, then the
 * client's bytes (the bus sends the pieces as one message).
 */
function rawWriteStep(session: string, req: Buffer, acceptedAt?: number): Buffer[] {
  const s = Buffer.byteLength(session, 'utf8');
  const head = Buffer.allocUnsafe((s ? 1 + varintLen(s) + s : 0) + (acceptedAt ? 9 : 0) + 1 + varintLen(req.length));
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
  head[p++] = 0x12; // field 2, length-delimited
  putVarint(head, p, req.length);
  return [head, req];
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

export class Gateway {
  private server?: grpc.Server;
  private uuid = '';
  /** Whether the NATS connection is up (health answers NOT_SERVING while it is not). */
  private natsUp = true;
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

  private contextOf(call: { metadata: grpc.Metadata; getDeadline(): grpc.Deadline }): CallContext {
    const md = call.metadata;
    const ctx: CallContext = { node: this.opts.nodeId };
    const ns = firstValue(md, NAMESPACE_KEY);
    if (ns) ctx.namespace = ns;
    const lease = firstValue(md, LEASE_KEY);
    if (lease) ctx.lease = lease;
    const dl = call.getDeadline();
    const ms = dl instanceof Date ? dl.getTime() : dl;
    if (Number.isFinite(ms) && ms > 0) ctx.deadline = ms;
    return ctx;
  }

  /** Runs a handler inside a server span continuing the client's trace. */
  private traced<T>(pathName: string, md: grpc.Metadata, fn: () => Promise<T>): Promise<T> {
    const parent = extractTrace(metadataCarrier(md), otelContext.active());
    return withSpan(pathName, SpanKind.SERVER, parent, { 'rpc.system': 'grpc', 'rpc.method': pathName }, fn);
  }

  private unary(pathName: string, handler: (req: Buffer, ctx: CallContext) => Promise<Buffer>): grpc.handleUnaryCall<Buffer, Buffer> {
    return (call, cb) => {
      const ctx = this.contextOf(call);
      this.traced(pathName, call.metadata, () => handler(call.request, ctx)).then(
        (res) => cb(null, res),
        (err) => cb(toStatus(err)),
      );
    };
  }

  private serverStream(pathName: string, subject: string): grpc.handleServerStreamingCall<Buffer, Buffer> {
    return (call) => {
      const ctx = this.contextOf(call);
      let cancelled = false;
      call.on('cancelled', () => (cancelled = true));
      this.traced(pathName, call.metadata, async () => {
        // Straight to the HTTP/2 stream (stream-writer.ts): a 10k-container ListStream is
        // 10,000 messages, which arrive in a few bus batches and leave as one write each.
        const out = new MessageWriter(call, MAX_MESSAGE);
        if (!out.direct) {
          for await (const msg of this.opts.bus.requestStream(subject, call.request, ctx)) {
            if (cancelled || !(await out.write(Buffer.from(msg.buffer, msg.byteOffset, msg.byteLength)))) return;
          }
          return;
        }
        const framer = new GrpcFramer(MAX_MESSAGE);
        for await (const batch of this.opts.bus.requestBatches(subject, call.request, ctx)) {
          for (const piece of framer.push(batch)) {
            if (cancelled) return;
            const more = Buffer.isBuffer(piece) ? await out.writeFrames(piece) : await out.write(piece.oversize);
            if (!more) return;
          }
        }
        if (framer.incomplete) throw errUnavailable(`${subject}: stream ended inside a message`);
      }).then(
        () => call.end(),
        // grpc-js sends a server stream's status from its 'error' event; destroy() would
        // leave the client waiting.
        (err) => call.emit('error', Object.assign(new Error(messageOf(err)), toStatus(err))),
      );
    };
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
  private contentWrite(): grpc.handleBidiStreamingCall<Buffer, Buffer> {
    const { bus } = this.opts;
    const WA = api.content.WriteAction;
    const pathName = `/${api.content.ContentDefinition.fullName}/Write`;
    return (call) => {
      const ctx = this.contextOf(call);
      // One server span for the whole stream; each step's bus request runs inside it.
      const span = openSpan(pathName, SpanKind.SERVER, extractTrace(metadataCarrier(call.metadata), otelContext.active()), { 'rpc.system': 'grpc', 'rpc.method': pathName });
      let session = '';
      let next = '';
      let finished = false;
      const queue: Buffer[] = [];
      let busy = false;
      let ended = false;
      // Pipelining state: the last response the content service sent, the offset the
      // stream reaches once every step in flight lands, and the digest of bytes 0..offset
      // (undefined while the gateway has not seen the stream from offset 0).
      let last: api.content.WriteContentResponse | undefined;
      let offset = 0;
      let hash: Hash | undefined;
      const inflight: { bytes: number; done: Promise<void> }[] = [];
      let inflightBytes = 0;
      let asyncError: unknown;
      const fail = (err: unknown) => {
        if (finished) return;
        finished = true;
        span.end(err);
        void closeSession();
        call.emit('error', Object.assign(new Error(messageOf(err)), toStatus(err)));
      };
      const closeSession = async () => {
        if (!session) return;
        const s = session;
        session = '';
        const step = api.flotillaContent.WriteStep.encode({ session: s, request: undefined, close: true, acceptedAt: 0 }).finish();
        await bus.request(next, step, ctx).catch(() => {});
      };
      const send = async (req: api.content.WriteContentRequest | Buffer, acceptedAt?: number): Promise<api.flotillaContent.WriteStepReply> => {
        const step = Buffer.isBuffer(req) ? rawWriteStep(session, req, acceptedAt) : api.flotillaContent.WriteStep.encode({ session, request: req, close: false, acceptedAt: 0 }).finish();
        const reply = api.flotillaContent.WriteStepReply.decode(await bus.request(session ? next : api_subject('Write'), step, ctx));
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
        call.write(Buffer.from(api.content.WriteContentResponse.encode({ ...last!, action: WA.WRITE, offset, digest: digestOf(hash!) }).finish()));
        const entry = { bytes: req.data.length, done: Promise.resolve() };
        entry.done = send(buf, preciseNow()).then(
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
      const handle = async (buf: Buffer) => {
        const req = api.content.WriteContentRequest.decode(buf);
        const limit = bus.chunkLimit - 4096;
        if (hash && last && session && req.action === WA.WRITE && !req.expected && req.data.length > 0 && req.data.length <= limit && (req.offset === offset || req.offset === 0)) {
          await pipelined(buf, req);
          return;
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
          // The client's own bytes as the step's request: no re-encoding of the data.
          reply = await send(buf);
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
        call.write(Buffer.from(api.content.WriteContentResponse.encode(last).finish()));
        if (reply.done) {
          session = '';
          finished = true;
          span.end();
          call.end();
        }
      };
      const pump = async () => {
        if (busy) return;
        busy = true;
        try {
          while (queue.length > 0 && !finished) await handle(queue.shift()!);
          if (ended && !finished) {
            // The content service closes the session after the steps still in flight (a
            // client that closed its stream reads no more answers, as with containerd).
            finished = true;
            await closeSession();
            span.end();
            call.end();
          }
        } catch (err) {
          fail(err);
        } finally {
          busy = false;
        }
      };
      call.on('data', (b: Buffer) => {
        queue.push(b);
        void otelContext.with(span.context, pump);
      });
      call.on('end', () => {
        ended = true;
        void otelContext.with(span.context, pump);
      });
      call.on('cancelled', () => {
        finished = true;
        span.end(new Error('cancelled'));
        void closeSession();
      });
      call.on('error', (err) => {
        span.end(err);
        void closeSession();
      });
    };
  }

  private forward(def: ServiceDefinition, route: Route): grpc.UntypedServiceImplementation {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const m of Object.values(def.methods)) {
      const pathName = `/${def.fullName}/${m.name}`;
      const subject = route(m.name);
      if (m.requestStream) {
        if (def.fullName === api.content.ContentDefinition.fullName && m.name === 'Write') impl[m.name] = this.contentWrite();
        continue;
      }
      if (def.fullName === api.tasks.TasksDefinition.fullName && m.name === 'Wait') {
        impl[m.name] = this.unary(pathName, (req, ctx) => this.held(subject, req, ctx));
        continue;
      }
      impl[m.name] = m.responseStream
        ? this.serverStream(pathName, subject)
        : this.unary(pathName, async (req, ctx) => Buffer.from(await this.opts.bus.request(subject, req, ctx)));
    }
    return impl;
  }

  /** Services the gateway answers itself: version, introspection and health. */
  private local(def: ServiceDefinition): grpc.UntypedServiceImplementation {
    const { version: V, introspection: I } = api;
    if (def.fullName === V.VersionDefinition.fullName) {
      return {
        Version: this.unary(`/${def.fullName}/Version`, async () =>
          Buffer.from(V.VersionResponse.encode({ version: this.opts.version, revision: this.opts.revision }).finish())),
      };
    }
    if (def.fullName === I.IntrospectionDefinition.fullName) {
      return {
        Plugins: this.unary(`/${def.fullName}/Plugins`, async (req) => {
          const r = I.PluginsRequest.decode(req);
          const plugins = await listPlugins(this.opts.bus, this.opts.nodeId, r.filters);
          return Buffer.from(I.PluginsResponse.encode({ plugins }).finish());
        }),
        Server: this.unary(`/${def.fullName}/Server`, async () => Buffer.from(I.ServerResponse.encode({ uuid: this.uuid }).finish())),
      };
    }
    return {};
  }

  private health(): grpc.UntypedServiceImplementation {
    const status = () => (this.opts.bus.nc.isClosed() || !this.natsUp ? ServingStatus.NOT_SERVING : ServingStatus.SERVING);
    return {
      Check: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
        const { service } = decodeCheckRequest(call.request);
        if (service && service !== 'containerd' && !service.startsWith('containerd.')) {
          cb({ code: grpc.status.NOT_FOUND, details: 'unknown service' });
          return;
        }
        cb(null, encodeCheckResponse(status()));
      },
      Watch: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
        call.write(encodeCheckResponse(status()));
      },
    };
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
    const server = new grpc.Server({
      'grpc.max_receive_message_length': MAX_MESSAGE,
      'grpc.max_send_message_length': MAX_MESSAGE,
      // channelz keeps per-call counters and trackers that nothing here reads.
      'grpc.enable_channelz': 0,
    });
    for (const def of SERVICES) {
      const route = routeFor(def.fullName, this.opts.nodeId);
      server.addService(rawDefinition(def), route ? this.forward(def, route) : this.local(def));
    }
    server.addService(healthDefinition(), this.health());
    await fs.mkdir(path.dirname(socket), { recursive: true });
    await fs.rm(socket, { force: true });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    await fs.chmod(socket, 0o660);
    widenFlowControl(server);
    this.server = server;
  }

  async stop(): Promise<void> {
    const s = this.server;
    if (!s) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        s.forceShutdown();
        resolve();
      }, 3000);
      s.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
    await fs.rm(this.opts.socket, { force: true });
  }
}

/**
 * Applies STREAM_WINDOW and CONNECTION_WINDOW to the HTTP/2 servers under a bound grpc-js
 * Server. grpc-js has no option for them, so this reaches its private `http2Servers` map;
 * test/ingest-direct.test.ts checks the windows a client is offered, so a grpc-js upgrade that
 * moves the map fails there instead of silently losing them.
 */
function widenFlowControl(server: grpc.Server): void {
  const servers = (server as unknown as { http2Servers?: Map<Http2Server, unknown> }).http2Servers;
  for (const h2 of servers?.keys() ?? []) {
    h2.updateSettings({ initialWindowSize: STREAM_WINDOW });
    h2.on('session', (session: ServerHttp2Session) => session.setLocalWindowSize(CONNECTION_WINDOW));
  }
}

export { ContainerdError, ErrorClass, errUnavailable, STREAM_WINDOW, CONNECTION_WINDOW };
