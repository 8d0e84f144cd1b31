// containerd's leases (metadata/leases.go): a lease holds content, snapshots and ingests
// against garbage collection until it is deleted or its containerd.io/gc.expire passes.
import { randomBytes } from 'node:crypto';
import { leases as lapi, toTimestamp } from '@flotilla/api';
import type { CallContext } from '@flotilla/bus';
import { type Sql, sqlState, UNIQUE_VIOLATION } from '@flotilla/db';
import { errAlreadyExists, errInvalidArgument, errNotFound, errNotImplemented } from '@flotilla/errdefs';
import { checkMap, parseFilters } from '@flotilla/filters';
import { namespaceRequired } from '@flotilla/identifiers';
import { GC_LOCK_NAME } from './gclock.js';

/** A resource released by a deletion (the collector may remove it without a grace period). */
export interface ReleasedResource {
  namespace: string;
  type: string;
  id: string;
}

export interface LeaseHooks {
  /** After a lease or lease resource is gone: a deletion for the GC scheduler; `sync` waits for a collection. */
  onDeleted?: (released: ReleasedResource[], sync: boolean) => Promise<void> | void;
}

const DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** containerd's parseLeaseResource: content, ingests and snapshots/<snapshotter>. */
function checkResource(r: lapi.Resource): lapi.Resource {
  const keys = r.type.split('/');
  switch (keys[0]) {
    case 'content':
    case 'ingests':
      if (keys.length !== 1) throw errInvalidArgument(`invalid resource type ${r.type}`);
      if (keys[0] === 'content' && !DIGEST_RE.test(r.id)) throw errInvalidArgument(`invalid content resource id ${r.id}: invalid checksum digest format`);
      return r;
    case 'snapshots':
      if (keys.length !== 2) throw errInvalidArgument(`invalid snapshot resource type ${r.type}`);
      return r;
    default:
      throw errNotImplemented(`resource type ${r.type} not supported yet`);
  }
}

function rowToLease(r: any): lapi.Lease {
  return { id: r.id, labels: r.labels ?? {}, createdAt: toTimestamp(r.created_at) };
}

export class LeaseStore {
  constructor(private readonly sql: Sql, private readonly hooks: LeaseHooks = {}) {}

  async create(ctx: CallContext, id: string, labels: Record<string, string>): Promise<lapi.Lease> {
    const ns = namespaceRequired(ctx);
    // No id: the server picks one, as containerd's leases service does (WithRandomID).
    if (!id) id = `${(Date.now() % 1000) * 1_000_000 + Number(process.hrtime.bigint() % 1_000_000n)}-${randomBytes(3).toString('base64url')}`;
    // Empty label values are not stored (containerd's writeMap drops them).
    const kept = Object.fromEntries(Object.entries(labels ?? {}).filter(([, v]) => v !== ''));
    try {
      // One statement (atomic: a refused lease creates no namespace), one round trip.
      const [r] = await this.sql`WITH ns AS (INSERT INTO metadata_namespaces (name) VALUES (${ns}) ON CONFLICT DO NOTHING)
        INSERT INTO metadata_leases (namespace, id, labels) VALUES (${ns}, ${id}, ${this.sql.json(kept)}) RETURNING *`;
      return rowToLease(r);
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`lease ${JSON.stringify(id)}`);
      throw err;
    }
  }

  async delete(ctx: CallContext, id: string, sync = false): Promise<void> {
    const ns = namespaceRequired(ctx);
    // One statement: the lease row goes (its resources by cascade) and the resources it held
    // come back, read from the statement's snapshot, i.e. as they were before the delete.
    const rows = await this.sql`WITH del AS (DELETE FROM metadata_leases WHERE namespace = ${ns} AND id = ${id} RETURNING id)
      SELECT r.type, r.id FROM del LEFT JOIN metadata_lease_resources r ON r.namespace = ${ns} AND r.lease = del.id`;
    if (rows.length === 0) throw errNotFound(`lease ${JSON.stringify(id)}`);
    const released = rows.filter((r) => r.type !== null).map((r) => ({ namespace: ns, type: r.type as string, id: r.id as string }));
    await this.hooks.onDeleted?.(released, sync);
  }

  async list(ctx: CallContext, filters: string[] = []): Promise<lapi.Lease[]> {
    const ns = namespaceRequired(ctx);
    const filter = parseFilters(filters, { wrapAgain: true });
    const rows = await this.sql`SELECT * FROM metadata_leases WHERE namespace = ${ns} ORDER BY id`;
    return rows.map(rowToLease).filter((l) =>
      filter.match((p) => {
        switch (p[0]) {
          case 'id': return [l.id, l.id.length > 0];
          case 'labels': return checkMap(p.slice(1), l.labels);
        }
        return ['', false];
      }),
    );
  }

  async addResource(ctx: CallContext, lease: string, res: lapi.Resource): Promise<void> {
    const ns = namespaceRequired(ctx);
    let invalid: unknown;
    try {
      checkResource(res);
    } catch (err) {
      invalid = err;
    }
    // Under the collection lock (gclock.ts), the three statements pipelined: the insert adds
    // nothing when the lease is missing, so nothing waits for the check's answer.
    const [, have] = await this.sql.begin((tx) => [
      tx`SELECT pg_advisory_xact_lock_shared(hashtext(${GC_LOCK_NAME}))`,
      tx`SELECT 1 FROM metadata_leases WHERE namespace = ${ns} AND id = ${lease} FOR SHARE`,
      ...(invalid ? [] : [tx`INSERT INTO metadata_lease_resources (namespace, lease, type, id)
        SELECT namespace, id, ${res.type}, ${res.id} FROM metadata_leases WHERE namespace = ${ns} AND id = ${lease}
        ON CONFLICT DO NOTHING`]),
    ]);
    // containerd checks the lease first, then the resource.
    if (have!.length === 0) throw errNotFound(`lease ${JSON.stringify(lease)}`);
    if (invalid) throw invalid;
  }

  async deleteResource(ctx: CallContext, lease: string, res: lapi.Resource): Promise<void> {
    const ns = namespaceRequired(ctx);
    const have = await this.sql`SELECT 1 FROM metadata_leases WHERE namespace = ${ns} AND id = ${lease}`;
    if (have.length === 0) throw errNotFound(`lease ${JSON.stringify(lease)}`);
    checkResource(res);
    await this.sql`DELETE FROM metadata_lease_resources WHERE namespace = ${ns} AND lease = ${lease} AND type = ${res.type} AND id = ${res.id}`;
    await this.hooks.onDeleted?.([{ namespace: ns, type: res.type, id: res.id }], false);
  }

  async listResources(ctx: CallContext, lease: string): Promise<lapi.Resource[]> {
    const ns = namespaceRequired(ctx);
    const have = await this.sql`SELECT 1 FROM metadata_leases WHERE namespace = ${ns} AND id = ${lease}`;
    if (have.length === 0) throw errNotFound(`lease ${JSON.stringify(lease)}`);
    // containerd lists content, then ingests, then snapshots by snapshotter.
    const rows = await this.sql`SELECT type, id FROM metadata_lease_resources WHERE namespace = ${ns} AND lease = ${lease}
      ORDER BY CASE WHEN type = 'content' THEN 0 WHEN type = 'ingests' THEN 1 ELSE 2 END, type, id`;
    return rows.map((r) => ({ type: r.type, id: r.id }));
  }
}
