// containerd's metadata content store over PostgreSQL and a blob Backend. Blobs are
// stored once; a namespace sees a digest only when content_blobs records it there.
// Ingests are recorded per (namespace, ref) in content_ingests and kept by the backend
// under a key derived from both, so two namespaces never share an ingest.
//
// Cross-process rules (the garbage collector follows them too):
// - A backend blob is created or deleted only while holding the advisory lock
//   CONTENT_BLOB_LOCK: shared by commits (backend publish + content_blobs row in one
//   transaction), exclusive by whoever deletes backend blobs.
// - Lease resources (metadata_lease_resources, owned by the leases service) are added
//   before the object they protect becomes visible, and removed after it is gone.
import { createHash } from 'node:crypto';
import type { CallContext } from '@flotilla/bus';
import type { Sql } from '@flotilla/db';
import { ContainerdError, ErrorClass, errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound, errUnavailable, isAlreadyExists, isNotFound } from '@flotilla/errdefs';
import { parseFilters, checkMap } from '@flotilla/filters';
import { namespaceRequired, validateLabels } from '@flotilla/identifiers';
import type { Backend, IngestWriter, Vouched } from './backend.js';
import { preciseNow } from '@flotilla/api';
import { digestError } from './digest.js';

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
  // expected: set when the ingest stands for content the backend already holds (a
  // commit into this namespace needs no bytes); the GC treats it as a reference.
  // expires_at: NULL when the ingest is held by a lease, else when it stops being a GC root.
  `ALTER TABLE content_ingests
     ADD COLUMN expected text NOT NULL DEFAULT '',
     ADD COLUMN expires_at timestamptz,
     ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()`,
  `CREATE INDEX content_blobs_digest ON content_blobs (digest)`,
  `CREATE INDEX content_ingests_expected ON content_ingests (expected) WHERE expected <> ''`,
];

/** SQL text of the advisory lock guarding backend blob creation and deletion. */
export const CONTENT_BLOB_LOCK = `hashtext('flotilla-content-blobs')`;

/** How long an ingest outside any lease stays a GC root (containerd: 24 h). */
const INGEST_EXPIRY_MS = 24 * 3600_000;
/** containerd's local store tries a held ref lock 10 times (about half a second). */
const LOCK_TRIES = 10;

export interface Info {
  digest: string;
  size: number;
  labels: Record<string, string>;
  createdAt: number;
  updatedAt: number;
}

export interface Status {
  ref: string;
  offset: number;
  total: number;
  expected: string;
  startedAt: number;
  updatedAt: number;
}

export interface Descriptor {
  size: number;
  digest: string;
}

export interface LeaseResource {
  /** `content` (id: digest) or `ingests` (id: ref), as containerd's leases name them. */
  type: 'content' | 'ingests';
  id: string;
}

/** Records lease membership (the leases service owns the table). */
export interface LeaseRecorder {
  /** NotFound when the lease does not exist. */
  add(namespace: string, lease: string, res: LeaseResource): Promise<void>;
  remove(namespace: string, lease: string, res: LeaseResource): Promise<void>;
}

export interface ContentStoreOptions {
  sql: Sql;
  backend: Backend;
  leases?: LeaseRecorder;
  /** Called after content was deleted from a namespace (containerd's /content/delete). */
  onDelete?: (namespace: string, digest: string) => void;
}

/** An open writer, as containerd's content.Writer. */
export interface Writer {
  readonly ref: string;
  status(): Status;
  /** After settle(), when a write was vouched for. */
  digest(): string;
  /** `at`: the write's time for updatedAt (ms since the epoch), when not now; `vouched`: see IngestWriter.write. */
  write(data: Uint8Array, at?: number, vouched?: Vouched): Promise<void>;
  /** See IngestWriter.vouch. */
  vouch(vouched: Vouched): void;
  /** See IngestWriter.settle. */
  settle(): Promise<void>;
  truncate(size: number): Promise<void>;
  commit(size: number, expected: string, labels?: Record<string, string>): Promise<void>;
  close(): Promise<void>;
}

export function validateInfoLabels(labels: Record<string, string> | undefined): void {
  try {
    validateLabels(labels);
  } catch (err) {
    throw errInvalidArgument(`info.Labels: ${(err as Error).message.replace(/: invalid argument$/, '')}`, { cause: err });
  }
}

/** The backend key of (namespace, ref): fixed length, safe as a file or object name. */
export function ingestKey(namespace: string, ref: string): string {
  return createHash('sha256').update(namespace).update('\0').update(ref).digest('hex');
}

const tsOf = (ms: number) => ms / 1000;

type BlobRow = { digest: string; size: string; labels: Record<string, string>; created: string; updated: string };

function rowInfo(r: BlobRow): Info {
  return { digest: r.digest, size: Number(r.size), labels: r.labels ?? {}, createdAt: Number(r.created) * 1000, updatedAt: Number(r.updated) * 1000 };
}

function infoFilter(info: Info) {
  return (fp: readonly string[]): [string, boolean] => {
    switch (fp[0]) {
      case 'digest':
        return [info.digest, true];
      case 'labels':
        return Object.keys(info.labels).length ? checkMap(fp.slice(1), info.labels) : ['', false];
      default:
        return ['', false];
    }
  };
}

class Lock {
  /** Set once its writer is closing: the ref is free as soon as this settles. */
  closing?: Promise<unknown>;
  constructor(readonly since: number, public release: () => void = () => {}) {}
}

export class ContentStore {
  private readonly sql: Sql;
  readonly backend: Backend;
  private readonly leases?: LeaseRecorder;
  private readonly onDelete?: (namespace: string, digest: string) => void;
  /** Ingest key -> lock; one writer per (namespace, ref) in this process. */
  private readonly locks = new Map<string, Lock>();
  /** Ingest key -> open writer, so Abort can end it. */
  private readonly open = new Map<string, NamespacedWriter>();

  constructor(opts: ContentStoreOptions) {
    this.sql = opts.sql;
    this.backend = opts.backend;
    this.leases = opts.leases;
    this.onDelete = opts.onDelete;
  }

  private async row(ns: string, dgst: string): Promise<BlobRow | undefined> {
    const rows = await this.sql<BlobRow[]>`SELECT digest, size, labels, extract(epoch from created_at) AS created, extract(epoch from updated_at) AS updated
      FROM content_blobs WHERE namespace = ${ns} AND digest = ${dgst}`;
    return rows[0];
  }

  async info(ctx: CallContext, dgst: string): Promise<Info> {
    const ns = namespaceRequired(ctx);
    const r = await this.row(ns, dgst);
    if (!r) throw errNotFound(`content digest ${dgst}`);
    return rowInfo(r);
  }

  async update(ctx: CallContext, info: { digest: string; labels: Record<string, string> }, fieldpaths: readonly string[]): Promise<Info> {
    const ns = namespaceRequired(ctx);
    return this.sql.begin(async (tx) => {
      const rows = await tx<BlobRow[]>`SELECT digest, size, labels, extract(epoch from created_at) AS created, extract(epoch from updated_at) AS updated
        FROM content_blobs WHERE namespace = ${ns} AND digest = ${info.digest} FOR UPDATE`;
      if (rows.length === 0) throw errNotFound(`content digest ${info.digest}`);
      const cur = rowInfo(rows[0]!);
      let labels: Record<string, string> = { ...cur.labels };
      if (fieldpaths.length > 0) {
        for (const p of fieldpaths) {
          if (p.startsWith('labels.')) {
            const k = p.slice('labels.'.length);
            labels[k] = info.labels?.[k] ?? '';
            continue;
          }
          if (p === 'labels') labels = { ...info.labels };
          else throw errInvalidArgument(`cannot update ${JSON.stringify(p)} field on content info ${JSON.stringify(info.digest)}`);
        }
      } else {
        labels = { ...info.labels };
      }
      validateInfoLabels(labels);
      // As boltutil.WriteLabels: an empty value removes the label.
      for (const [k, v] of Object.entries(labels)) if (v === '') delete labels[k];
      const now = preciseNow();
      const out = await tx<BlobRow[]>`UPDATE content_blobs SET labels = ${tx.json(labels)}, updated_at = to_timestamp(${tsOf(now)})
        WHERE namespace = ${ns} AND digest = ${info.digest}
        RETURNING digest, size, labels, extract(epoch from created_at) AS created, extract(epoch from updated_at) AS updated`;
      return rowInfo(out[0]!);
    });
  }

  /** Every blob of the namespace passing `filters`, in digest order, in pages. */
  async *walk(ctx: CallContext, filters: readonly string[]): AsyncGenerator<Info> {
    const ns = namespaceRequired(ctx);
    const filter = parseFilters(filters);
    let after = '';
    for (;;) {
      const rows = await this.sql<BlobRow[]>`SELECT digest, size, labels, extract(epoch from created_at) AS created, extract(epoch from updated_at) AS updated
        FROM content_blobs WHERE namespace = ${ns} AND digest > ${after} ORDER BY digest LIMIT 500`;
      if (rows.length === 0) return;
      for (const r of rows) {
        const info = rowInfo(r);
        if (filter.match(infoFilter(info))) yield info;
      }
      after = rows[rows.length - 1]!.digest;
    }
  }

  async delete(ctx: CallContext, dgst: string): Promise<void> {
    const ns = namespaceRequired(ctx);
    await this.sql.begin(async (tx) => {
      await tx.unsafe(`SELECT pg_advisory_xact_lock(${CONTENT_BLOB_LOCK})`);
      const rows = await tx`DELETE FROM content_blobs WHERE namespace = ${ns} AND digest = ${dgst} RETURNING digest`;
      if (rows.length === 0) throw errNotFound(`content digest ${dgst}`);
      // The blob goes with its last reference: no namespace records it and no ingest
      // stands for it (what containerd's collector would find on its next run).
      const left = await tx`SELECT 1 FROM content_blobs WHERE digest = ${dgst}
        UNION ALL SELECT 1 FROM content_ingests WHERE expected = ${dgst} LIMIT 1`;
      if (left.length === 0) await this.backend.delete(dgst);
    });
    if (ctx.lease) await this.leases?.remove(ns, ctx.lease, { type: 'content', id: dgst }).catch(() => {});
    this.onDelete?.(ns, dgst);
  }

  async status(ctx: CallContext, ref: string): Promise<Status> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`SELECT key FROM content_ingests WHERE namespace = ${ns} AND ref = ${ref}`;
    if (rows.length === 0) throw errNotFound(`reference ${ref}`);
    return { ...(await this.backendStatus(rows[0]!.key)), ref };
  }

  private async backendStatus(key: string): Promise<Status> {
    const w = this.open.get(key);
    if (w?.inner) return { ...w.inner.status(), expected: '' };
    return { ...(await this.backend.ingestStatus(key)), expected: '' };
  }

  async listStatuses(ctx: CallContext, filters: readonly string[]): Promise<Status[]> {
    const ns = namespaceRequired(ctx);
    const filter = parseFilters(filters);
    const rows = await this.sql`SELECT ref, key FROM content_ingests WHERE namespace = ${ns} ORDER BY ref`;
    const out: Status[] = [];
    for (const r of rows) {
      let st: Status;
      try {
        st = { ...(await this.backendStatus(r.key)), ref: r.ref };
      } catch (err) {
        if (isNotFound(err)) continue;
        throw err;
      }
      if (filter.match((fp) => (fp[0] === 'ref' ? [st.ref, true] : ['', false]))) out.push(st);
    }
    return out;
  }

  async abort(ctx: CallContext, ref: string): Promise<void> {
    const ns = namespaceRequired(ctx);
    const key = ingestKey(ns, ref);
    const rows = await this.sql`DELETE FROM content_ingests WHERE namespace = ${ns} AND ref = ${ref} RETURNING expected`;
    if (rows.length === 0) throw errNotFound(`reference ${ref}`);
    // A writer still holding the ref loses its ingest, as with containerd's local store.
    await this.open.get(key)?.invalidate();
    await this.backend.abort(key).catch((err) => {
      if (!isNotFound(err)) throw err;
    });
    if (ctx.lease) await this.leases?.remove(ns, ctx.lease, { type: 'ingests', id: ref }).catch(() => {});
  }

  private async lock(key: string, ref: string): Promise<Lock> {
    // As containerd's local store: ten tries, sleeping up to 2^n ms between them.
    for (let n = 0; ; n++) {
      const held = this.locks.get(key);
      if (!held) {
        const l = new Lock(Date.now());
        l.release = () => {
          if (this.locks.get(key) === l) this.locks.delete(key);
        };
        this.locks.set(key, l);
        return l;
      }
      if (held.closing) {
        // Its client has ended that writer: the ref is free once its close (a backend flush)
        // finishes, however long that takes; not a try of the ten.
        await held.closing.catch(() => {});
        n--;
        continue;
      }
      if (n >= LOCK_TRIES - 1) {
        throw errUnavailable(`ref ${ref} locked for ${Date.now() - held.since}ms (since ${new Date(held.since).toISOString()})`);
      }
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * (1 << n))));
    }
  }

  /**
   * Opens (or resumes) the ingest `ref`, as containerd's metadata contentStore.Writer:
   * AlreadyExists when `desc.digest` is already in the namespace; when the backend
   * already has it (another namespace committed it), the ingest holds no bytes and
   * commits instantly.
   */
  async writer(ctx: CallContext, ref: string, desc: Descriptor): Promise<Writer> {
    if (!ref) throw errInvalidArgument('ref must not be empty');
    const ns = namespaceRequired(ctx);
    desc = { ...desc };
    let shared = false;
    // An invalid expected digest is no error here (containerd drops it before the
    // backend sees it); the commit then fails verification.
    if (desc.digest && !digestError(desc.digest)) {
      if (await this.row(ns, desc.digest)) {
        if (ctx.lease) await this.leaseAdd(ns, ctx.lease, { type: 'content', id: desc.digest });
        throw errAlreadyExists(`content ${desc.digest}`);
      }
      const st = await this.backend.stat(desc.digest).catch((err) => (isNotFound(err) ? undefined : Promise.reject(err)));
      if (st && (desc.size === 0 || desc.size === st.size)) {
        shared = true;
        desc.size = st.size;
      }
    }
    const key = ingestKey(ns, ref);
    const lock = await this.lock(key, `${ns}/${ref}`);
    try {
      if (ctx.lease) await this.leaseAdd(ns, ctx.lease, { type: 'ingests', id: ref });
      const expires = ctx.lease ? null : new Date(Date.now() + INGEST_EXPIRY_MS);
      const expected = shared ? desc.digest : '';
      await this.sql`INSERT INTO content_ingests (namespace, ref, key, expected, expires_at) VALUES (${ns}, ${ref}, ${key}, ${expected}, ${expires})
        ON CONFLICT (namespace, ref) DO UPDATE SET expected = EXCLUDED.expected, expires_at = EXCLUDED.expires_at`;
      const inner = shared ? undefined : await this.backend.writer(key, ref, desc.size);
      const w = new NamespacedWriter(this, ns, ref, key, ctx.lease, desc, inner, lock);
      this.open.set(key, w);
      return w;
    } catch (err) {
      lock.release();
      throw err;
    }
  }

  private async leaseAdd(ns: string, lease: string, res: LeaseResource): Promise<void> {
    if (!this.leases) return;
    try {
      await this.leases.add(ns, lease, res);
    } catch (err) {
      if (isNotFound(err)) throw errNotFound('lease does not exist', { cause: err });
      throw err;
    }
  }

  /** @internal Called by writers. */
  async commitWriter(w: NamespacedWriter, size: number, expected: string, labels: Record<string, string> | undefined): Promise<void> {
    validateInfoLabels(labels);
    let actual: string;
    const inner = w.inner;
    if (!inner) {
      if (size !== 0 && size !== w.desc.size) throw errFailedPrecondition(`${JSON.stringify(w.ref)} failed size validation: ${w.desc.size} != ${size}`);
      if (expected && expected !== w.desc.digest) throw errFailedPrecondition(`${JSON.stringify(w.ref)} unexpected digest`);
      size = w.desc.size;
      actual = w.desc.digest;
    } else {
      await inner.settle?.();
      const st = inner.status();
      if (size !== 0 && size !== st.offset) throw errFailedPrecondition(`${JSON.stringify(w.ref)} failed size validation: ${st.offset} != ${size}`);
      size = st.offset;
      actual = inner.digest();
      if (expected && expected !== actual) throw errFailedPrecondition(`unexpected commit digest ${actual}, expected ${expected}`);
    }
    // The lease protects the digest before it becomes visible.
    if (w.lease) await this.leaseAdd(w.ns, w.lease, { type: 'content', id: actual });
    const now = preciseNow();
    let exists = false;
    await this.sql.begin(async (tx) => {
      await tx.unsafe(`SELECT pg_advisory_xact_lock_shared(${CONTENT_BLOB_LOCK})`);
      if (inner) {
        try {
          await inner.commit(size, expected);
        } catch (err) {
          if (!isAlreadyExists(err)) throw err;
        }
      }
      const rows = await tx`INSERT INTO content_blobs (namespace, digest, size, labels, created_at, updated_at)
        VALUES (${w.ns}, ${actual}, ${size}, ${tx.json(labels ?? {})}, to_timestamp(${tsOf(now)}), to_timestamp(${tsOf(now)}))
        ON CONFLICT DO NOTHING RETURNING digest`;
      exists = rows.length === 0;
      await tx`DELETE FROM content_ingests WHERE namespace = ${w.ns} AND ref = ${w.ref}`;
    });
    if (w.lease) await this.leases?.remove(w.ns, w.lease, { type: 'ingests', id: w.ref }).catch(() => {});
    w.committed(actual);
    if (exists) throw errAlreadyExists(`content ${actual}`);
  }

  /** @internal */
  forget(key: string, w: NamespacedWriter): void {
    if (this.open.get(key) === w) this.open.delete(key);
  }

  /** @internal Copies the blob `dgst` into a fresh ingest (a shared ingest being appended to). */
  async copyInto(inner: IngestWriter, dgst: string, size: number): Promise<void> {
    if (inner.offset > 0) await inner.truncate(0);
    if (size === 0) return;
    for await (const piece of this.backend.read(dgst, 0, size, 1 << 20)) await inner.write(piece.data);
  }
}

/** containerd's namespacedWriter: a backend ingest, or none yet for shared content. */
export class NamespacedWriter implements Writer {
  private readonly startedAt = preciseNow();
  private closed = false;
  private final: string | undefined;
  constructor(
    private readonly store: ContentStore,
    readonly ns: string,
    readonly ref: string,
    private readonly key: string,
    readonly lease: string | undefined,
    readonly desc: Descriptor,
    public inner: IngestWriter | undefined,
    private readonly lock: Lock,
  ) {}

  private live(): void {
    if (this.closed) throw new ContainerdError(ErrorClass.NotFound, `ingest ref ${JSON.stringify(this.ref)}: not found`);
  }

  status(): Status {
    if (this.inner) return { ...this.inner.status(), ref: this.ref, expected: '' };
    return { ref: this.ref, offset: this.desc.size, total: this.desc.size, startedAt: this.startedAt, updatedAt: this.startedAt, expected: this.desc.digest };
  }

  digest(): string {
    if (this.final) return this.final;
    return this.inner ? this.inner.digest() : this.desc.digest;
  }

  private async materialise(size: number): Promise<IngestWriter> {
    const inner = await this.store.backend.writer(this.key, this.ref, size);
    try {
      await this.store.copyInto(inner, this.desc.digest, size);
    } catch (err) {
      await inner.close();
      throw err;
    }
    this.inner = inner;
    return inner;
  }

  async write(data: Uint8Array, at?: number, vouched?: Vouched): Promise<void> {
    this.live();
    if (!this.inner) {
      if (data.length === 0) return;
      await this.materialise(this.desc.size);
    }
    await this.inner!.write(data, at, vouched);
  }

  vouch(vouched: Vouched): void {
    this.inner?.vouch?.(vouched);
  }

  async settle(): Promise<void> {
    await this.inner?.settle?.();
  }

  async truncate(size: number): Promise<void> {
    this.live();
    if (this.inner) return this.inner.truncate(size);
    if (size !== 0) throw errInvalidArgument('Truncate: unsupported size');
    await this.materialise(0);
  }

  async commit(size: number, expected: string, labels?: Record<string, string>): Promise<void> {
    this.live();
    try {
      await this.store.commitWriter(this, size, expected, labels);
    } finally {
      await this.close();
    }
  }

  /** @internal */
  committed(dgst: string): void {
    this.final = dgst;
    this.inner = undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = (async () => {
      try {
        await this.inner?.close();
      } finally {
        this.store.forget(this.key, this);
        this.lock.release();
      }
    })();
    this.lock.closing = done;
    await done;
  }

  /** @internal The ingest was aborted under this writer. */
  async invalidate(): Promise<void> {
    await this.close().catch(() => {});
  }
}
