// Garbage collection, containerd's model (metadata/gc.go, gc/gc.go) over PostgreSQL.
//
// Roots, per namespace: unexpired leases (and what they hold), images (target and label
// references), containers (their snapshot and label references), content and snapshots
// labelled containerd.io/gc.root. References: containerd.io/gc.ref.content[./<x>] labels
// to content, containerd.io/gc.ref.snapshot.<snapshotter>[/<x>] labels to snapshots, a
// snapshot's parent; a lease labelled containerd.io/gc.flat holds only its own resources
// (no label references, parents only for snapshots). Expired leases are removed.
//
// Safety against concurrent writers: the collection holds the collection lock (gclock.ts)
// exclusively from before its mark until its sweep is done, so no reference can be added
// to an existing object in between; it reads every table in one REPEATABLE READ snapshot;
// and it never removes an object created or updated less than `graceMs` before its mark,
// which covers writers that create an object and then attach it to a lease in a second
// step (content commit, snapshot prepare). Objects that a deletion just released (a
// deleted lease's resources, a deleted image's target, and what they reference) are not
// held by the grace period, so a synchronous delete collects them at once as containerd's.
//
// Removal is done by the owners: content through the content service's Delete, snapshots
// through the Remove of the snapshotter on the node that holds them.
import type { Sql } from '@flotilla/db';
import { GC_LOCK_NAME } from './gclock.js';
import type { ReleasedResource } from './leases.js';

export const LABEL_GC_ROOT = 'containerd.io/gc.root';
export const LABEL_GC_REF_CONTENT = 'containerd.io/gc.ref.content';
export const LABEL_GC_REF_SNAPSHOT = 'containerd.io/gc.ref.snapshot.';
export const LABEL_GC_EXPIRE = 'containerd.io/gc.expire';
export const LABEL_GC_FLAT = 'containerd.io/gc.flat';

/** What the collector asks the owners to remove. */
export interface GcRemover {
  removeContent(namespace: string, digest: string): Promise<void>;
  removeSnapshot(node: string, namespace: string, snapshotter: string, key: string): Promise<void>;
}

export interface GcStats {
  /** Content records removed, snapshots removed, expired leases removed. */
  content: number;
  snapshots: number;
  leases: number;
  /** Unreferenced objects kept because they are younger than the grace period. */
  deferred: number;
  /** When the youngest deferred object leaves the grace period (epoch ms), if any. */
  deferredUntil?: number;
  /** Removals that failed (owner unavailable, snapshot gained a child); retried next time. */
  failed: number;
  elapsedMs: number;
}

export interface CollectorOptions {
  /** Objects created or updated less than this before a mark are never removed by it. */
  graceMs?: number;
  log?: (msg: string, err?: unknown) => void;
}

type NodeKey = string; // "c\0ns\0digest" | "s\0ns\0snapshotter/key"
const contentNode = (ns: string, dgst: string): NodeKey => `c\0${ns}\0${dgst}`;
const snapshotNode = (ns: string, ssKey: string): NodeKey => `s\0${ns}\0${ssKey}`;

interface SnapshotRow { id: string; node: string; snapshotter: string; namespace: string; key: string; parent_id: string | null; labels: Record<string, string>; created_at: Date; updated_at: Date }
interface ContentRow { namespace: string; digest: string; labels: Record<string, string>; created_at: Date; updated_at: Date }

/** containerd's sendLabelRefs: content and snapshot references named by labels. */
export function labelRefs(ns: string, labels: Record<string, string> | undefined, out: (n: NodeKey) => void): void {
  if (!labels) return;
  for (const k of Object.keys(labels).sort()) {
    const v = labels[k]!;
    if (k.startsWith(LABEL_GC_REF_CONTENT)) {
      const next = k[LABEL_GC_REF_CONTENT.length];
      if (next === undefined || next === '.' || next === '/') out(contentNode(ns, v));
    } else if (k.startsWith(LABEL_GC_REF_SNAPSHOT)) {
      let ss = k.slice(LABEL_GC_REF_SNAPSHOT.length);
      const i = ss.indexOf('/');
      if (i >= 0) ss = ss.slice(0, i);
      out(snapshotNode(ns, `${ss}/${v}`));
    }
  }
}

/** An unparsable expiry is ignored (the lease does not expire), as containerd logs and ignores it. */
function expired(labels: Record<string, string>, now: number): boolean {
  const v = labels[LABEL_GC_EXPIRE];
  if (v === undefined) return false;
  const t = Date.parse(v);
  return !Number.isNaN(t) && now > t;
}

async function tableExists(tx: Sql, name: string): Promise<boolean> {
  const [r] = await tx`SELECT to_regclass(${name}) IS NOT NULL AS ok`;
  return !!r?.ok;
}

export class GarbageCollector {
  private readonly graceMs: number;
  private readonly log: (msg: string, err?: unknown) => void;

  constructor(private readonly sql: Sql, private readonly remover: GcRemover, opts: CollectorOptions = {}) {
    this.graceMs = opts.graceMs ?? 10_000;
    this.log = opts.log ?? (() => {});
  }

  /** One mark and sweep. `released` names objects a deletion just let go (no grace for them). */
  async collect(released: ReleasedResource[] = []): Promise<GcStats> {
    const t1 = Date.now();
    const conn = await this.sql.reserve();
    try {
      await conn`SELECT pg_advisory_lock(hashtext(${GC_LOCK_NAME}))`;
      try {
        return await this.markAndSweep(conn as unknown as Sql, released, t1);
      } finally {
        await conn`SELECT pg_advisory_unlock(hashtext(${GC_LOCK_NAME}))`;
      }
    } finally {
      conn.release();
    }
  }

  private async markAndSweep(conn: Sql, released: ReleasedResource[], t1: number): Promise<GcStats> {
    // ---- read everything in one snapshot ----
    // A reserved connection has no begin(): the transaction is spelled out.
    const inSnapshot = async <T>(fn: (tx: Sql) => Promise<T>): Promise<T> => {
      await conn.unsafe('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      try {
        const v = await fn(conn);
        await conn.unsafe('COMMIT');
        return v;
      } catch (err) {
        await conn.unsafe('ROLLBACK').catch(() => {});
        throw err;
      }
    };
    const snap = await inSnapshot(async (tx) => {
      const [{ now }] = (await tx`SELECT now() AS now`) as any;
      const leases = await tx`SELECT namespace, id, labels FROM metadata_leases`;
      const resources = await tx`SELECT namespace, lease, type, id FROM metadata_lease_resources`;
      const containers = await tx`SELECT namespace, labels, snapshotter, snapshot_key FROM metadata_containers`;
      const images = (await tableExists(tx, 'images')) ? await tx`SELECT namespace, labels, target_digest FROM images` : [];
      const content = (await tableExists(tx, 'content_blobs'))
        ? ((await tx`SELECT namespace, digest, labels, created_at, updated_at FROM content_blobs`) as unknown as ContentRow[]) : [];
      const snapshots = (await tableExists(tx, 'snapshots_snapshots'))
        ? ((await tx`SELECT id::text, node, snapshotter, namespace, key, parent_id::text, labels, created_at, updated_at FROM snapshots_snapshots`) as unknown as SnapshotRow[]) : [];
      return { now: (now as Date).getTime(), leases, resources, containers, images, content, snapshots };
    });
    const now = snap.now;

    // ---- index ----
    const contentBy = new Map<NodeKey, ContentRow>();
    for (const c of snap.content) contentBy.set(contentNode(c.namespace, c.digest), c);
    const snapsBy = new Map<NodeKey, SnapshotRow[]>();
    const snapById = new Map<string, SnapshotRow>();
    for (const s of snap.snapshots) {
      const k = snapshotNode(s.namespace, `${s.snapshotter}/${s.key}`);
      (snapsBy.get(k) ?? snapsBy.set(k, []).get(k)!).push(s);
      snapById.set(s.id, s);
    }
    const resByLease = new Map<string, { type: string; id: string }[]>();
    for (const r of snap.resources) {
      const k = `${r.namespace}\0${r.lease}`;
      (resByLease.get(k) ?? resByLease.set(k, []).get(k)!).push({ type: r.type, id: r.id });
    }

    // ---- roots ----
    // A flat root follows no label references (its snapshots still keep their parents).
    const roots: { node: NodeKey; flat: boolean }[] = [];
    const root = (node: NodeKey, flat = false) => roots.push({ node, flat });
    const expiredLeases: { namespace: string; id: string }[] = [];
    for (const l of snap.leases) {
      const labels = (l.labels ?? {}) as Record<string, string>;
      if (expired(labels, now)) {
        expiredLeases.push({ namespace: l.namespace, id: l.id });
        continue;
      }
      const flat = labels[LABEL_GC_FLAT] !== undefined;
      for (const r of resByLease.get(`${l.namespace}\0${l.id}`) ?? []) {
        if (r.type === 'content') root(contentNode(l.namespace, r.id), flat);
        else if (r.type.startsWith('snapshots/')) root(snapshotNode(l.namespace, `${r.type.slice('snapshots/'.length)}/${r.id}`), flat);
        // ingests: never removed by this collector (see docs/architecture.md).
      }
    }
    for (const i of snap.images) {
      root(contentNode(i.namespace, i.target_digest));
      labelRefs(i.namespace, i.labels, (n) => root(n));
    }
    for (const c of snap.containers) {
      if (c.snapshotter) root(snapshotNode(c.namespace, `${c.snapshotter}/${c.snapshot_key}`));
      labelRefs(c.namespace, c.labels, (n) => root(n));
    }
    for (const [k, c] of contentBy) if (c.labels?.[LABEL_GC_ROOT] !== undefined) root(k);
    for (const [k, rows] of snapsBy) if (rows.some((s) => s.labels?.[LABEL_GC_ROOT] !== undefined)) root(k);

    // ---- mark (tricolour, iterative) ----
    const refs = (node: NodeKey, flat: boolean, out: (n: NodeKey) => void) => {
      if (node.startsWith('c\0')) {
        if (!flat) labelRefs(node.split('\0')[1]!, contentBy.get(node)?.labels, out);
        return;
      }
      for (const s of snapsBy.get(node) ?? []) {
        const p = s.parent_id ? snapById.get(s.parent_id) : undefined;
        if (p) out(snapshotNode(p.namespace, `${p.snapshotter}/${p.key}`));
        if (!flat) labelRefs(s.namespace, s.labels, out);
      }
    };
    const mark = (start: { node: NodeKey; flat: boolean }[]) => {
      const reached = new Set<NodeKey>();
      // A node reached flat may later be reached fully; track the two separately.
      const seen = new Set<string>();
      const gray = [...start];
      while (gray.length > 0) {
        const { node, flat } = gray.pop()!;
        const id = (flat ? 'f' : 'n') + node;
        if (seen.has(id)) continue;
        seen.add(id);
        reached.add(node);
        refs(node, flat, (n) => gray.push({ node: n, flat }));
      }
      return reached;
    };
    const marked = mark(roots);
    const hinted = mark(
      released.flatMap((r) =>
        r.type === 'content' ? [{ node: contentNode(r.namespace, r.id), flat: false }]
        : r.type.startsWith('snapshots/') ? [{ node: snapshotNode(r.namespace, `${r.type.slice(10)}/${r.id}`), flat: false }]
        : []),
    );

    // ---- sweep ----
    const stats: GcStats = { content: 0, snapshots: 0, leases: 0, deferred: 0, failed: 0, elapsedMs: 0 };
    const cutoff = now - this.graceMs;
    const young = (created: Date, updated: Date, node: NodeKey) => {
      if (hinted.has(node)) return false;
      const t = Math.max(created.getTime(), updated.getTime());
      if (t < cutoff) return false;
      stats.deferred++;
      const until = t + this.graceMs;
      stats.deferredUntil = Math.max(stats.deferredUntil ?? 0, until);
      return true;
    };

    if (expiredLeases.length > 0) {
      for (const l of expiredLeases) {
        const r = await conn`DELETE FROM metadata_leases WHERE namespace = ${l.namespace} AND id = ${l.id}
          AND labels->>${LABEL_GC_EXPIRE} IS NOT NULL RETURNING id`;
        stats.leases += r.length;
      }
    }

    // Snapshots: children before parents, so a parent is free when its turn comes.
    const depth = (s: SnapshotRow) => {
      let d = 0;
      for (let p = s.parent_id; p && d < 10_000; p = snapById.get(p)?.parent_id ?? null) d++;
      return d;
    };
    const doomedSnaps = snap.snapshots
      .filter((s) => {
        const k = snapshotNode(s.namespace, `${s.snapshotter}/${s.key}`);
        return !marked.has(k) && !young(s.created_at, s.updated_at, k);
      })
      .map((s) => ({ s, d: depth(s) }))
      .sort((a, b) => b.d - a.d);
    for (const { s } of doomedSnaps) {
      try {
        await this.remover.removeSnapshot(s.node, s.namespace, s.snapshotter, s.key);
        stats.snapshots++;
      } catch (err) {
        stats.failed++;
        this.log(`gc: remove snapshot ${s.snapshotter}/${s.key} on ${s.node} in ${s.namespace}`, err);
      }
    }

    for (const [k, c] of contentBy) {
      if (marked.has(k) || young(c.created_at, c.updated_at, k)) continue;
      try {
        await this.remover.removeContent(c.namespace, c.digest);
        stats.content++;
      } catch (err) {
        stats.failed++;
        this.log(`gc: remove content ${c.digest} in ${c.namespace}`, err);
      }
    }
    stats.elapsedMs = Date.now() - t1;
    return stats;
  }
}
