// containerd's content service over a backend (local disk) and PostgreSQL metadata.
// Blobs are stored once; each namespace sees only the digests recorded for it in
// content_blobs, as containerd's metadata store keeps per-namespace buckets.
import { randomUUID } from 'node:crypto';
import { content as api, toTimestamp } from '@flotilla/api';
import type { CallContext } from '@flotilla/bus';
import { errAlreadyExists, errInvalidArgument, errNotFound, errUnavailable, ContainerdError, ErrorClass, isAlreadyExists } from '@flotilla/errdefs';
import { namespaceRequired, validateLabels } from '@flotilla/identifiers';
import type { Sql } from '@flotilla/db';
import { DiskStore, type Ingest, validateDigest } from './disk.js';

export const contentMigrations = [
  `CREATE TABLE content_blobs (
     namespace text NOT NULL,
     digest text NOT NULL,
     size bigint NOT NULL,
     labels jsonb NOT NULL DEFAULT '{}',
     created_at timestamptz NOT NULL DEFAULT now(),
     updated_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (namespace, digest))`,
  `CREATE TABLE content_ingests (
     namespace text NOT NULL,
     ref text NOT NULL,
     key text NOT NULL,
     PRIMARY KEY (namespace, ref))`,
];

export interface ContentHooks {
  /** Called after a commit under a lease (containerd adds the blob to the lease). */
  onCommit?: (namespace: string, lease: string, digest: string) => Promise<void>;
  onDelete?: (namespace: string, digest: string) => void;
}

interface WriteSession {
  id: string;
  ns: string;
  ref: string;
  total: number;
  expected: string;
  ingest: Ingest;
  timer: NodeJS.Timeout;
}

const SESSION_IDLE_MS = 60_000;

function toInfo(r: { digest: string; size: string | number; labels: Record<string, string>; created_at: Date; updated_at: Date }): api.Info {
  return {
    digest: r.digest,
    size: Number(r.size),
    labels: r.labels ?? {},
    createdAt: toTimestamp(r.created_at),
    updatedAt: toTimestamp(r.updated_at),
  };
}

export class ContentService {
  private readonly sessions = new Map<string, WriteSession>();
  /** Ingest key -> session id holding it; a second writer gets Unavailable and retries. */
  private readonly locks = new Map<string, string>();

  constructor(
    private readonly sql: Sql,
    readonly disk: DiskStore,
    private readonly hooks: ContentHooks = {},
    /** Largest data chunk per Read reply. */
    private readonly readChunk = 1024 * 1024,
  ) {}

  private async row(ns: string, dgst: string) {
    const rows = await this.sql`SELECT digest, size, labels, created_at, updated_at FROM content_blobs WHERE namespace = ${ns} AND digest = ${dgst}`;
    if (rows.length === 0) throw errNotFound(`content digest ${dgst}`);
    return rows[0] as any;
  }

  async info(req: api.InfoRequest, ctx: CallContext): Promise<api.InfoResponse> {
    const ns = namespaceRequired(ctx);
    validateDigest(req.digest);
    return { info: toInfo(await this.row(ns, req.digest)) };
  }

  async update(req: api.UpdateRequest, ctx: CallContext): Promise<api.UpdateResponse> {
    const ns = namespaceRequired(ctx);
    const info = req.info;
    if (!info) throw errInvalidArgument('info is required');
    validateDigest(info.digest);
    validateLabels(info.labels);
    const cur = await this.row(ns, info.digest);
    let labels: Record<string, string> = { ...cur.labels };
    const paths = req.updateMask ?? [];
    if (paths.length === 0) {
      labels = { ...info.labels };
    } else {
      for (const p of paths) {
        if (p === 'labels') labels = { ...info.labels };
        else if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          if (info.labels[k] !== undefined && info.labels[k] !== '') labels[k] = info.labels[k]!;
          else delete labels[k];
        } else throw errInvalidArgument(`cannot update ${JSON.stringify(p)} field on content info ${JSON.stringify(info.digest)}`);
      }
    }
    const rows = await this.sql`UPDATE content_blobs SET labels = ${this.sql.json(labels)}, updated_at = now()
      WHERE namespace = ${ns} AND digest = ${info.digest} RETURNING digest, size, labels, created_at, updated_at`;
    if (rows.length === 0) throw errNotFound(`content digest ${info.digest}`);
    return { info: toInfo(rows[0] as any) };
  }

  async *list(req: api.ListContentRequest, ctx: CallContext): AsyncGenerator<api.ListContentResponse> {
    const ns = namespaceRequired(ctx);
    // TODO(filters): containerd's filter language lands with the filters lib (issue 3).
    void req;
    let after = '';
    for (;;) {
      const rows = await this.sql`SELECT digest, size, labels, created_at, updated_at FROM content_blobs
        WHERE namespace = ${ns} AND digest > ${after} ORDER BY digest LIMIT 500`;
      if (rows.length === 0) return;
      yield { info: rows.map((r) => toInfo(r as any)) };
      after = rows[rows.length - 1]!.digest;
    }
  }

  async delete(req: api.DeleteContentRequest, ctx: CallContext): Promise<Record<string, never>> {
    const ns = namespaceRequired(ctx);
    validateDigest(req.digest);
    const rows = await this.sql`DELETE FROM content_blobs WHERE namespace = ${ns} AND digest = ${req.digest} RETURNING digest`;
    if (rows.length === 0) throw errNotFound(`content digest ${req.digest}`);
    // The blob itself goes when no namespace references it any more (GC's job in full;
    // here: immediately, since nothing else can reach it).
    const left = await this.sql`SELECT 1 FROM content_blobs WHERE digest = ${req.digest} LIMIT 1`;
    if (left.length === 0) await this.disk.delete(req.digest);
    this.hooks.onDelete?.(ns, req.digest);
    return {};
  }

  async *read(req: api.ReadContentRequest, ctx: CallContext): AsyncGenerator<api.ReadContentResponse> {
    const ns = namespaceRequired(ctx);
    validateDigest(req.digest);
    await this.row(ns, req.digest);
    for await (const c of this.disk.read(req.digest, req.offset, req.size, this.readChunk)) yield c;
  }

  async status(req: api.StatusRequest, ctx: CallContext): Promise<api.StatusResponse> {
    const ns = namespaceRequired(ctx);
    const st = await this.disk.statIngest(DiskStore.ingestKey(ns, req.ref)).catch((e) => {
      throw new ContainerdError(ErrorClass.NotFound, `ref ${req.ref}: not found`, { cause: e });
    });
    return { status: toStatus(st) };
  }

  async listStatuses(_req: api.ListStatusesRequest, ctx: CallContext): Promise<api.ListStatusesResponse> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`SELECT ref, key FROM content_ingests WHERE namespace = ${ns} ORDER BY ref`;
    const statuses: api.Status[] = [];
    for (const r of rows) {
      const st = await this.disk.statIngest(r.key).catch(() => undefined);
      if (st) statuses.push(toStatus(st));
    }
    return { statuses };
  }

  async abort(req: api.AbortRequest, ctx: CallContext): Promise<Record<string, never>> {
    const ns = namespaceRequired(ctx);
    const key = DiskStore.ingestKey(ns, req.ref);
    const rows = await this.sql`DELETE FROM content_ingests WHERE namespace = ${ns} AND ref = ${req.ref} RETURNING key`;
    if (rows.length === 0) throw errNotFound(`ref ${req.ref}`);
    if (this.locks.has(key)) throw errUnavailable(`ref ${req.ref} locked`);
    await this.disk.abortIngest(key);
    return {};
  }

  // ---- Write: one bidirectional gRPC stream becomes a session of unary steps ----

  /**
   * First message of a Write stream. Returns the session id that later steps name, and
   * the reply to this message. Mirrors containerd's contentserver.Write.
   */
  async writeOpen(req: api.WriteContentRequest, ctx: CallContext): Promise<{ session: string; reply: api.WriteContentResponse; done: boolean }> {
    const ns = namespaceRequired(ctx);
    if (!req.ref) throw errInvalidArgument('first message must have a reference');
    if (req.expected) {
      validateDigest(req.expected);
      const have = await this.sql`SELECT 1 FROM content_blobs WHERE namespace = ${ns} AND digest = ${req.expected}`;
      if (have.length > 0) {
        if (ctx.lease) await this.hooks.onCommit?.(ns, ctx.lease, req.expected);
        throw errAlreadyExists(`content ${req.expected}`);
      }
    }
    const key = DiskStore.ingestKey(ns, req.ref);
    if (this.locks.has(key)) throw errUnavailable(`ref ${req.ref} locked`);
    const id = randomUUID();
    this.locks.set(key, id);
    try {
      await this.sql`INSERT INTO content_ingests (namespace, ref, key) VALUES (${ns}, ${req.ref}, ${key}) ON CONFLICT DO NOTHING`;
      const ingest = await this.disk.openIngest(key, req.ref, req.total, req.expected);
      const s: WriteSession = { id, ns, ref: req.ref, total: req.total || ingest.total, expected: req.expected || ingest.expected, ingest, timer: undefined as never };
      this.sessions.set(id, s);
      this.touch(s);
      const { reply, done } = await this.step(s, req, ctx);
      return { session: id, reply, done };
    } catch (err) {
      await this.writeClose(id);
      this.locks.delete(key);
      throw err;
    }
  }

  /** A later message of the stream. An error ends the session, as it ends containerd's stream. */
  async writeNext(session: string, req: api.WriteContentRequest, ctx: CallContext): Promise<{ reply: api.WriteContentResponse; done: boolean }> {
    const s = this.sessions.get(session);
    if (!s) throw errUnavailable('write session expired or unknown');
    this.touch(s);
    try {
      const r = await this.step(s, req, ctx);
      if (r.done) await this.writeClose(session);
      return r;
    } catch (err) {
      await this.writeClose(session);
      throw err;
    }
  }

  /** Ends a session (client closed its stream); the ingest stays on disk for resumption. */
  async writeClose(session: string): Promise<void> {
    const s = this.sessions.get(session);
    if (!s) return;
    this.sessions.delete(session);
    clearTimeout(s.timer);
    const key = DiskStore.ingestKey(s.ns, s.ref);
    if (this.locks.get(key) === session) this.locks.delete(key);
    await s.ingest.close();
  }

  private touch(s: WriteSession): void {
    clearTimeout(s.timer);
    s.timer = setTimeout(() => void this.writeClose(s.id), SESSION_IDLE_MS).unref();
  }

  private async step(s: WriteSession, req: api.WriteContentRequest, ctx: CallContext): Promise<{ reply: api.WriteContentResponse; done: boolean }> {
    const w = s.ingest;
    const reply: api.WriteContentResponse = {
      action: req.action, startedAt: undefined, updatedAt: undefined, offset: w.offset, total: 0, digest: '',
    };
    if (req.expected) {
      validateDigest(req.expected);
      s.expected = req.expected;
      const have = await this.sql`SELECT 1 FROM content_blobs WHERE namespace = ${s.ns} AND digest = ${req.expected}`;
      if (have.length > 0) {
        await this.writeClose(s.id);
        await this.abortQuietly(s);
        throw errAlreadyExists(`blob with expected digest ${req.expected} exists`);
      }
    }
    if (req.total > 0) s.total = req.total;
    switch (req.action) {
      case api.WriteAction.STAT:
        reply.digest = w.digest();
        reply.startedAt = toTimestamp(w.startedAt);
        reply.updatedAt = toTimestamp(w.updatedAt);
        reply.total = s.total;
        return { reply, done: false };
      case api.WriteAction.WRITE:
      case api.WriteAction.COMMIT: {
        if (req.offset > 0 && req.offset !== w.offset) {
          throw new ContainerdError(ErrorClass.OutOfRange, `write @${req.offset} must occur at current offset ${w.offset}`);
        }
        if (req.offset === 0 && w.offset > 0) {
          await w.truncate(0);
          reply.offset = 0;
        }
        if (req.data.length > 0) {
          w.total = s.total;
          await w.write(req.data);
          reply.offset = w.offset;
        }
        if (req.action === api.WriteAction.COMMIT) {
          validateLabels(req.labels);
          await this.commit(s, req.labels, ctx);
          reply.digest = w.digest();
          return { reply, done: true };
        }
        reply.digest = w.digest();
        return { reply, done: false };
      }
      default:
        throw errInvalidArgument(`unknown write action ${req.action}`);
    }
  }

  private async commit(s: WriteSession, labels: Record<string, string>, ctx: CallContext): Promise<void> {
    let dgst: string;
    let size: number;
    try {
      ({ digest: dgst, size } = await s.ingest.commit(s.total, s.expected));
    } catch (err) {
      // Already in the backend (another namespace committed it): the blob is shared,
      // this namespace gets its own record — containerd's shared content policy.
      if (!isAlreadyExists(err)) throw err;
      dgst = s.ingest.digest();
      size = s.ingest.offset;
    }
    await this.sql`DELETE FROM content_ingests WHERE namespace = ${s.ns} AND ref = ${s.ref}`;
    const rows = await this.sql`INSERT INTO content_blobs (namespace, digest, size, labels)
      VALUES (${s.ns}, ${dgst}, ${size}, ${this.sql.json(labels ?? {})}) ON CONFLICT DO NOTHING RETURNING digest`;
    if (ctx.lease) await this.hooks.onCommit?.(s.ns, ctx.lease, dgst);
    if (rows.length === 0) throw errAlreadyExists(`content ${dgst}`);
  }

  private async abortQuietly(s: WriteSession): Promise<void> {
    await this.sql`DELETE FROM content_ingests WHERE namespace = ${s.ns} AND ref = ${s.ref}`;
    await this.disk.abortIngest(DiskStore.ingestKey(s.ns, s.ref));
  }

  async close(): Promise<void> {
    for (const id of [...this.sessions.keys()]) await this.writeClose(id);
  }
}

function toStatus(st: { ref: string; offset: number; total: number; expected: string; startedAt: number; updatedAt: number }): api.Status {
  return { ref: st.ref, offset: st.offset, total: st.total, expected: st.expected, startedAt: toTimestamp(st.startedAt), updatedAt: toTimestamp(st.updatedAt) };
}
