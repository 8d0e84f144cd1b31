// containerd's overlayfs and native snapshotters for one node. Records live in PostgreSQL
// (one row per snapshot, unique per node, snapshotter, namespace and key; parents by
// internal id), data under <root>/snapshots/<id>. The class plays both of containerd's
// layers: metadata/snapshot.go (namespaces, labels, user-facing errors) and the backend
// (snapshots/overlay, snapshots/native over snapshots/storage): mounts, kinds, parent
// rules and error classes follow containerd 1.6.
import { execFile } from 'node:child_process';
import fsSync, { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type postgres from 'postgres';
import { errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound, errUnknown } from '@flotilla/errdefs';
import { validateLabels } from '@flotilla/identifiers';
import { diskUsage, type Usage } from './usage.js';

const execFileP = promisify(execFile);

/** Any Postgres.js pool or transaction. */
export type Sql = postgres.Sql<{}> | postgres.TransactionSql<{}>;

export type SnapshotterName = 'overlayfs' | 'native';
export const SNAPSHOTTERS: readonly SnapshotterName[] = ['overlayfs', 'native'];

export type SnapshotKind = 'view' | 'active' | 'committed';

/** A mount as containerd's mount.Mount: mounting all of a list onto one target gives the tree. */
export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

/** containerd's snapshots.Info; `parent` is the parent's key, "" for none. */
export interface Info {
  name: string;
  parent: string;
  kind: SnapshotKind;
  labels: Record<string, string>;
  createdAt: Date;
  updatedAt: Date;
  /** createdAt and updatedAt to the microsecond PostgreSQL keeps (a Date holds milliseconds). */
  created: Timestamp;
  updated: Timestamp;
}

/** A point in time as protobuf's Timestamp: whole seconds since the epoch and nanoseconds. */
export interface Timestamp {
  seconds: number;
  nanos: number;
}

export interface SnapshotterOptions {
  /** Postgres.js pool; the tables come from `snapshotMigrations`. */
  sql: postgres.Sql<{}>;
  /** This node: records of other nodes are never seen. */
  nodeId: string;
  name: SnapshotterName;
  /** This snapshotter's data directory (distinct per snapshotter). */
  root: string;
}

/** Ordered migrations, applied as `migrate(sql, 'snapshots', snapshotMigrations)`. */
export const snapshotMigrations: readonly string[] = [
  `CREATE TABLE snapshots_snapshots (
     id bigserial PRIMARY KEY,
     node text NOT NULL,
     snapshotter text NOT NULL,
     namespace text NOT NULL,
     key text NOT NULL,
     parent_id bigint REFERENCES snapshots_snapshots (id),
     kind text NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
     labels jsonb NOT NULL DEFAULT '{}',
     size bigint NOT NULL DEFAULT 0,
     inodes bigint NOT NULL DEFAULT 0,
     created_at timestamptz NOT NULL DEFAULT now(),
     updated_at timestamptz NOT NULL DEFAULT now(),
     UNIQUE (node, snapshotter, namespace, key))`,
  `CREATE INDEX snapshots_snapshots_parent ON snapshots_snapshots (parent_id)`,
];

const UNIQUE_VIOLATION = '23505';
const FOREIGN_KEY_VIOLATION = '23503';
const sqlState = (err: unknown) => (typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined);

interface Row {
  id: string;
  key: string;
  parent: string | null;
  parent_id: string | null;
  kind: SnapshotKind;
  labels: Record<string, string>;
  size: string;
  inodes: string;
  created_at: Date;
  updated_at: Date;
  /** Epoch microseconds, as text (bigint). */
  created_us: string;
  updated_us: string;
  /** Ids of the ancestors, nearest first (only when asked for: `withChain`). */
  parent_ids?: string[];
}

function timestampOf(us: string): Timestamp {
  const v = BigInt(us);
  const seconds = v / 1_000_000n;
  return { seconds: Number(seconds), nanos: Number(v - seconds * 1_000_000n) * 1000 };
}

function toInfo(r: Row): Info {
  return {
    name: r.key,
    parent: r.parent ?? '',
    kind: r.kind,
    labels: r.labels ?? {},
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    created: timestampOf(r.created_us),
    updated: timestampOf(r.updated_us),
  };
}

/**
 * The name containerd's metadata store gives a snapshot in its backend ("<ns>/<seq>/<key>"),
 * which the backend's error messages quote; the row id stands in for the sequence.
 */
const backendKey = (ns: string, r: { id: string; key: string }) => `${ns}/${r.id}/${r.key}`;

/** The columns of a Row, from snapshots_snapshots `s` joined to its parent `p`. */
const columns = (sql: Sql) => sql.unsafe(`s.id, s.key, p.key AS parent, s.parent_id, s.kind, s.labels, s.size, s.inodes, s.created_at, s.updated_at,
  (extract(epoch FROM s.created_at) * 1000000)::bigint::text AS created_us, (extract(epoch FROM s.updated_at) * 1000000)::bigint::text AS updated_us`);

/**
 * The ids of row `s`'s ancestors, nearest first, as column `parent_ids`: the parent chain
 * read in the same statement as the row, so looking a snapshot up for its mounts is one
 * query, not two.
 */
const chainColumn = (sql: Sql) => sql.unsafe(`ARRAY(
  WITH RECURSIVE chain AS (
    SELECT a.id, a.parent_id, 1 AS depth FROM snapshots_snapshots a WHERE a.id = s.parent_id
    UNION ALL
    SELECT b.id, b.parent_id, c.depth + 1 FROM snapshots_snapshots b JOIN chain c ON b.id = c.parent_id)
  SELECT id::text FROM chain ORDER BY depth) AS parent_ids`);

/** containerd's overlay check: the kernel's overlay module knows "index=off" when it has the parameter. */
function overlaySupportsIndex(): boolean {
  return existsSync('/sys/module/overlay/parameters/index');
}

/**
 * The label a client sets on Prepare to name the committed snapshot it is after (remote
 * snapshotters); containerd refuses the Prepare when that snapshot already exists.
 */
const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';

/** validateLabels with containerd's metadata-store context ("info.Labels: ..."). */
function checkLabels(labels: Record<string, string>): void {
  try {
    validateLabels(labels);
  } catch (err) {
    if (err instanceof Error) err.message = `info.Labels: ${err.message}`;
    throw err;
  }
}

/** Labels with empty values dropped (containerd never stores an empty label). */
function cleanLabels(labels: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels ?? {})) if (v !== '' && v !== undefined && v !== null) out[k] = v;
  return out;
}

/** An unrecorded directory is left alone by cleanup() for this long: it may be an in-flight create. */
const NEW_DIR_GRACE_MS = 10 * 60 * 1000;

export class Snapshotter {
  readonly name: SnapshotterName;
  readonly nodeId: string;
  readonly root: string;
  private readonly sql: postgres.Sql<{}>;
  private readonly indexOff = overlaySupportsIndex();
  private ready: Promise<void> | undefined;
  /** Data of removed snapshots still being deleted (renamed `rm-<id>` directories), by name. */
  private readonly discarding = new Map<string, Promise<void>>();

  constructor(opts: SnapshotterOptions) {
    if (opts.name !== 'overlayfs' && opts.name !== 'native') throw errInvalidArgument(`unknown snapshotter ${JSON.stringify(opts.name)}`);
    if (!opts.nodeId) throw errInvalidArgument('snapshotter nodeId must be set');
    if (!path.isAbsolute(opts.root)) throw errInvalidArgument(`snapshotter root must be absolute, got ${JSON.stringify(opts.root)}`);
    this.sql = opts.sql;
    this.nodeId = opts.nodeId;
    this.name = opts.name;
    this.root = opts.root;
  }

  /** Creates the data directory; idempotent, and done implicitly by every change. */
  init(): Promise<void> {
    this.ready ??= fs.mkdir(path.join(this.root, 'snapshots'), { recursive: true, mode: 0o700 }).then(() => {});
    return this.ready;
  }

  // Layout: overlayfs keeps <id>/fs (the upper dir) and <id>/work; native keeps the tree in <id>.
  private dir(id: string): string {
    return path.join(this.root, 'snapshots', id);
  }
  private upper(id: string): string {
    return this.name === 'overlayfs' ? path.join(this.dir(id), 'fs') : this.dir(id);
  }
  private work(id: string): string {
    return path.join(this.dir(id), 'work');
  }

  /** The rows of `keys` (those that exist), with their parent chains when `withChain`. */
  private async findAll(sql: Sql, ns: string, keys: string[], lock: '' | 'update' | 'share' = '', withChain = false): Promise<Row[]> {
    const suffix = lock === 'update' ? sql`FOR UPDATE OF s` : lock === 'share' ? sql`FOR SHARE OF s` : sql``;
    const match = keys.length === 1 ? sql`s.key = ${keys[0]!}` : sql`s.key IN ${sql(keys)}`;
    return sql<Row[]>`
      SELECT ${columns(sql)} ${withChain ? sql`, ${chainColumn(sql)}` : sql``}
      FROM snapshots_snapshots s LEFT JOIN snapshots_snapshots p ON p.id = s.parent_id
      WHERE s.node = ${this.nodeId} AND s.snapshotter = ${this.name} AND s.namespace = ${ns} AND ${match} ${suffix}`;
  }

  private async find(sql: Sql, ns: string, key: string, lock: '' | 'update' | 'share' = '', withChain = false): Promise<Row | undefined> {
    return (await this.findAll(sql, ns, [key], lock, withChain))[0];
  }

  private async get(sql: Sql, ns: string, key: string, lock: '' | 'update' | 'share' = '', withChain = false): Promise<Row> {
    const r = await this.find(sql, ns, key, lock, withChain);
    if (!r) throw errNotFound(`snapshot ${key} does not exist`);
    return r;
  }

  /** The mounts of an active or view snapshot whose parents are `parentIds` (nearest first). */
  private mountsOf(id: string, kind: SnapshotKind, parentIds: string[]): Mount[] {
    if (this.name === 'native') {
      // Active snapshots (and parentless views) own a full copy; views of a parent bind it read-only.
      const source = parentIds.length === 0 || kind === 'active' ? this.dir(id) : this.dir(parentIds[0]!);
      // containerd's native snapshotter lists "rbind" first (its defaultMountOptions).
      return [{ type: 'bind', source, target: '', options: ['rbind', kind === 'view' ? 'ro' : 'rw'] }];
    }
    if (parentIds.length === 0) {
      // Overlay needs at least one lower: a parentless snapshot is its upper dir, bound.
      return [{ type: 'bind', source: this.upper(id), target: '', options: [kind === 'view' ? 'ro' : 'rw', 'rbind'] }];
    }
    const options: string[] = [];
    if (this.indexOff) options.push('index=off');
    if (kind === 'active') {
      options.push(`workdir=${this.work(id)}`, `upperdir=${this.upper(id)}`);
    } else if (parentIds.length === 1) {
      return [{ type: 'bind', source: this.upper(parentIds[0]!), target: '', options: ['ro', 'rbind'] }];
    }
    options.push(`lowerdir=${parentIds.map((p) => this.upper(p)).join(':')}`);
    return [{ type: 'overlay', source: 'overlay', target: '', options }];
  }

  /**
   * `before`, when given, must resolve before the row is committed (the caller's lease
   * recording, running meanwhile); its failure is this call's, reported before any of
   * the snapshot's own errors, and leaves nothing behind.
   */
  private async create(kind: 'active' | 'view', ns: string, key: string, parent: string, labels: Record<string, string>, before?: Promise<void>): Promise<Mount[]> {
    if (!ns) throw errInvalidArgument('namespace must not be empty');
    if (!key) throw errInvalidArgument('snapshot key must not be empty');
    labels = cleanLabels(labels);
    checkLabels(labels);
    await this.init();

    // The directory is built under a temp name and renamed to the id inside the transaction
    // that records it; a crash in between leaves a directory cleanup() removes. These few
    // metadata calls are synchronous: each costs less than a trip through the thread pool.
    const needsDir = this.name === 'overlayfs' || kind === 'active' || !parent;
    let td: string | undefined;
    let renamedTo: string | undefined;
    try {
      if (needsDir) {
        td = fsSync.mkdtempSync(path.join(this.root, 'snapshots', 'new-'));
        fsSync.chmodSync(td, this.name === 'native' ? 0o755 : 0o700);
        if (this.name === 'overlayfs') {
          fsSync.mkdirSync(path.join(td, 'fs'), { mode: 0o755 });
          fsSync.chmodSync(path.join(td, 'fs'), 0o755);
          if (kind === 'active') fsSync.mkdirSync(path.join(td, 'work'), { mode: 0o711 });
        }
      }
      return (await this.sql.begin(async (tx) => {
        // The target reference, the key and the parent (with its chain) in one statement.
        // FOR SHARE: the parent cannot be removed (or committed over) until this commits;
        // a target or key row found is an error, which ends the transaction at once.
        const target = labels[LABEL_SNAPSHOT_REF];
        const rows = await this.findAll(tx, ns, [...new Set([key, ...(target ? [target] : []), ...(parent ? [parent] : [])])], 'share', true);
        const byKey = (k: string) => rows.find((r) => r.key === k);
        // containerd's order of checks: the target reference, the key, then the parent.
        if (target && byKey(target)) throw errAlreadyExists(`target snapshot ${JSON.stringify(target)}`);
        if (byKey(key)) throw errAlreadyExists(`snapshot ${JSON.stringify(key)}`);
        let parentRow: Row | undefined;
        if (parent) {
          parentRow = byKey(parent);
          if (!parentRow) throw errNotFound(`parent snapshot ${parent} does not exist`);
          if (parentRow.kind !== 'committed') throw errInvalidArgument(`failed to create snapshot: parent ${JSON.stringify(backendKey(ns, parentRow))} is not committed snapshot`);
        }
        const [row] = await tx<{ id: string }[]>`
          INSERT INTO snapshots_snapshots (node, snapshotter, namespace, key, parent_id, kind, labels)
          VALUES (${this.nodeId}, ${this.name}, ${ns}, ${key}, ${parentRow?.id ?? null}, ${kind}, ${tx.json(labels)})
          RETURNING id`;
        const id = String(row!.id);
        const parentIds = parentRow ? [String(parentRow.id), ...parentRow.parent_ids!] : [];
        if (td) {
          if (parentIds.length > 0 && this.name === 'overlayfs') {
            // The upper dir takes the owner of the nearest parent's root, as containerd does.
            const st = fsSync.statSync(this.upper(parentIds[0]!));
            fsSync.lchownSync(path.join(td, 'fs'), st.uid, st.gid);
          }
          if (parentIds.length > 0 && this.name === 'native') {
            // A full copy: owners, modes, times, links, devices and xattrs (best effort).
            await execFileP('cp', ['-a', '--', `${this.dir(parentIds[0]!)}/.`, td]);
          }
          fsSync.renameSync(td, this.dir(id));
          renamedTo = this.dir(id);
        }
        // The row is written meanwhile but committed (visible to anyone, the collector
        // included) only once the caller's lease holds it; a failure rolls it back.
        await before;
        return this.mountsOf(id, kind, parentIds);
      })) as Mount[];
    } catch (err) {
      // A failure of `before` comes first, as when the lease was recorded before anything.
      const failed = before ? await before.then(() => undefined, (e: unknown) => ({ e })) : undefined;
      if (td) await fs.rm(renamedTo ?? td, { recursive: true, force: true });
      if (failed) throw failed.e;
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`snapshot ${JSON.stringify(key)}`, { cause: err });
      throw err;
    }
  }

  /** An active (writable) snapshot `key` on `parent` (a committed key, or "" for none). */
  prepare(ns: string, key: string, parent = '', labels: Record<string, string> = {}, before?: Promise<void>): Promise<Mount[]> {
    return this.create('active', ns, key, parent, labels, before);
  }

  /** A read-only view `key` of `parent`; it cannot be committed. */
  view(ns: string, key: string, parent = '', labels: Record<string, string> = {}, before?: Promise<void>): Promise<Mount[]> {
    return this.create('view', ns, key, parent, labels, before);
  }

  /** The mounts of an active snapshot or a view (FailedPrecondition for a committed one). */
  async mounts(ns: string, key: string): Promise<Mount[]> {
    const r = await this.get(this.sql, ns, key, '', true);
    if (r.kind === 'committed') {
      throw errFailedPrecondition(`${this.name === 'native' ? 'failed to get snapshot mount' : 'failed to get active mount'}: requested snapshot ${backendKey(ns, r)} not active or view`);
    }
    return this.mountsOf(r.id, r.kind, r.parent_ids!);
  }

  /**
   * Turns active snapshot `key` into committed snapshot `name` (same data, same parent;
   * `labels` replace the active's; created and updated are now).
   */
  async commit(ns: string, name: string, key: string, labels: Record<string, string> = {}): Promise<void> {
    if (!name) throw errInvalidArgument('snapshot name must not be empty');
    labels = cleanLabels(labels);
    checkLabels(labels);
    // containerd checks the new name before the key (both read in one statement).
    const rows = await this.findAll(this.sql, ns, [...new Set([name, key])]);
    if (rows.some((r) => r.key === name)) throw errAlreadyExists(`snapshot ${JSON.stringify(name)}`);
    const pre = rows.find((r) => r.key === key);
    if (!pre) throw errNotFound(`snapshot ${key} does not exist`);
    if (this.name === 'native' && pre.kind === 'view' && pre.parent_id) {
      // containerd's native Commit measures the snapshot's directory before checking its
      // kind; a view of a parent has none, so the client sees that lstat failure.
      throw errUnknown(`lstat ${this.dir(pre.id)}: no such file or directory`);
    }
    // Measured before the transaction: walking a large tree must not hold row locks.
    const usage = pre.kind === 'active' ? await diskUsage(this.upper(pre.id)) : { size: 0, inodes: 0 };
    try {
      await this.sql.begin(async (tx) => {
        // A `name` created since the check above fails the UPDATE (unique key): AlreadyExists.
        const r = await this.get(tx, ns, key, 'update');
        if (r.kind !== 'active') throw errFailedPrecondition(`failed to commit snapshot: snapshot ${JSON.stringify(backendKey(ns, r))} is not active`);
        await tx`UPDATE snapshots_snapshots SET key = ${name}, kind = 'committed', labels = ${tx.json(labels)},
          size = ${usage.size}, inodes = ${usage.inodes}, created_at = now(), updated_at = now() WHERE id = ${r.id}`;
      });
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`snapshot ${JSON.stringify(name)}`, { cause: err });
      throw err;
    }
  }

  /** Removes a snapshot and its data; FailedPrecondition while it has children. */
  async remove(ns: string, key: string): Promise<void> {
    let id: string;
    try {
      // One statement; only when it deletes nothing is the reason looked up.
      const [row] = await this.sql<{ id: string }[]>`
        DELETE FROM snapshots_snapshots s
        WHERE s.node = ${this.nodeId} AND s.snapshotter = ${this.name} AND s.namespace = ${ns} AND s.key = ${key}
          AND NOT EXISTS (SELECT 1 FROM snapshots_snapshots c WHERE c.parent_id = s.id)
        RETURNING s.id`;
      if (!row) {
        await this.get(this.sql, ns, key);
        throw errFailedPrecondition('cannot remove snapshot with child');
      }
      id = String(row.id);
    } catch (err) {
      // A child created concurrently (it holds the parent row FOR SHARE until it commits).
      if (sqlState(err) === FOREIGN_KEY_VIOLATION) throw errFailedPrecondition('cannot remove snapshot with child', { cause: err });
      throw err;
    }
    // Renamed first so a half-removed tree is never mistaken for a live one; the tree itself
    // is deleted after the call answers, as containerd's garbage collector deletes a removed
    // snapshot's data after its Remove (which only drops the record). A removal that fails
    // or is cut short by a restart leaves an `rm-` directory that cleanup() deletes.
    try {
      fsSync.renameSync(this.dir(id), path.join(this.root, 'snapshots', `rm-${id}`));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      return;
    }
    this.discard(`rm-${id}`);
  }

  /** Deletes `<root>/snapshots/<name>` in the background (once per name at a time). */
  private discard(name: string): Promise<void> {
    let p = this.discarding.get(name);
    if (p) return p;
    p = fs.rm(path.join(this.root, 'snapshots', name), { recursive: true, force: true })
      .catch(() => {}) // left for cleanup()
      .finally(() => this.discarding.delete(name));
    this.discarding.set(name, p);
    return p;
  }

  /** Resolves once the data of every snapshot removed so far is deleted from disk (or failed to be). */
  async settled(): Promise<void> {
    while (this.discarding.size > 0) await Promise.all([...this.discarding.values()]);
  }

  async stat(ns: string, key: string): Promise<Info> {
    return toInfo(await this.get(this.sql, ns, key));
  }

  /**
   * Updates labels, as containerd: no fieldpaths replaces all labels; "labels" likewise;
   * "labels.<k>" sets (or, when empty or absent in `info`, removes) one; anything else is
   * InvalidArgument. Returns the updated info.
   */
  async update(ns: string, info: { name: string; labels?: Record<string, string> }, fieldpaths: string[] = []): Promise<Info> {
    if (!info.name) throw errInvalidArgument('snapshot name must be set');
    return (await this.sql.begin(async (tx) => {
      const r = await this.get(tx, ns, info.name, 'update');
      const given = info.labels ?? {};
      let labels: Record<string, string> = { ...r.labels };
      if (fieldpaths.length === 0) labels = { ...given };
      for (const p of fieldpaths) {
        if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          labels[k] = given[k] ?? '';
        } else if (p === 'labels') {
          labels = { ...given };
        } else {
          throw errInvalidArgument(`cannot update ${JSON.stringify(p)} field on snapshot ${JSON.stringify(info.name)}`);
        }
      }
      labels = cleanLabels(labels);
      checkLabels(labels);
      await tx`UPDATE snapshots_snapshots SET labels = ${tx.json(labels)}, updated_at = now() WHERE id = ${r.id}`;
      return toInfo((await this.find(tx, ns, info.name))!);
    })) as Info;
  }

  /** Every snapshot of the namespace, by key, optionally filtered; fetched in pages. */
  async *list(ns: string, filter?: (info: Info) => boolean): AsyncGenerator<Info> {
    let after: string | undefined;
    for (;;) {
      const rows: Row[] = await this.sql<Row[]>`
        SELECT ${columns(this.sql)}
        FROM snapshots_snapshots s LEFT JOIN snapshots_snapshots p ON p.id = s.parent_id
        WHERE s.node = ${this.nodeId} AND s.snapshotter = ${this.name} AND s.namespace = ${ns}
          ${after === undefined ? this.sql`` : this.sql`AND s.key COLLATE "C" > ${after}`}
        ORDER BY s.key COLLATE "C" LIMIT 500`;
      for (const r of rows) {
        const info = toInfo(r);
        if (!filter || filter(info)) yield info;
      }
      if (rows.length < 500) return;
      after = rows[rows.length - 1]!.key;
    }
  }

  /** Disk usage: measured now for an active snapshot, recorded at commit otherwise. */
  async usage(ns: string, key: string): Promise<Usage> {
    const r = await this.get(this.sql, ns, key);
    if (r.kind === 'active') return diskUsage(this.upper(r.id));
    return { size: Number(r.size), inodes: Number(r.inodes) };
  }

  /**
   * Removes data directories no record of this node and snapshotter points at: leftovers
   * of removals and of creates that failed half-way. Recent unrecorded directories other
   * than removals are left alone, as a create may be renaming into place before it commits.
   */
  async cleanup(): Promise<void> {
    await this.init();
    const rows = await this.sql<{ id: string }[]>`SELECT id FROM snapshots_snapshots WHERE node = ${this.nodeId} AND snapshotter = ${this.name}`;
    const live = new Set(rows.map((r) => String(r.id)));
    const base = path.join(this.root, 'snapshots');
    for (const d of await fs.readdir(base)) {
      if (live.has(d)) continue;
      if (!d.startsWith('rm-')) {
        const st = await fs.lstat(path.join(base, d)).catch(() => undefined);
        if (!st || Date.now() - st.mtimeMs < NEW_DIR_GRACE_MS) continue;
        await fs.rm(path.join(base, d), { recursive: true, force: true });
        continue;
      }
      // Joins a removal still running (or retries one that failed).
      await this.discard(d);
      if (existsSync(path.join(base, d))) await fs.rm(path.join(base, d), { recursive: true, force: true });
    }
  }
}
