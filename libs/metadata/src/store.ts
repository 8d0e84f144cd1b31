// The metadata service's PostgreSQL stores: namespaces, containers and leases, with
// containerd's validation, error texts and events.
import { randomBytes } from 'node:crypto';
import { Any, containers as capi, leases as lapi, namespaces as napi, evContainer, evNamespace, toTimestamp } from '@flotilla/api';
import { type Sql, sqlState, UNIQUE_VIOLATION } from '@flotilla/db';
import { errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound } from '@flotilla/errdefs';
import { namespaceRequired, validateIdentifier, validateLabels } from '@flotilla/identifiers';
import type { CallContext } from '@flotilla/bus';
import { applyMapPaths, refuseFields } from './fieldpaths.js';

export const metadataMigrations = [
  `CREATE TABLE metadata_namespaces (
     name text PRIMARY KEY,
     labels jsonb NOT NULL DEFAULT '{}',
     created_at timestamptz NOT NULL DEFAULT now())`,
  `CREATE TABLE metadata_containers (
     namespace text NOT NULL,
     id text NOT NULL,
     labels jsonb NOT NULL DEFAULT '{}',
     image text NOT NULL DEFAULT '',
     runtime_name text NOT NULL,
     runtime_options bytea,
     spec bytea NOT NULL,
     snapshotter text NOT NULL DEFAULT '',
     snapshot_key text NOT NULL DEFAULT '',
     extensions bytea,
     created_at timestamptz NOT NULL DEFAULT now(),
     updated_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (namespace, id))`,
  `CREATE TABLE metadata_leases (
     namespace text NOT NULL,
     id text NOT NULL,
     labels jsonb NOT NULL DEFAULT '{}',
     created_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (namespace, id))`,
  `CREATE TABLE metadata_lease_resources (
     namespace text NOT NULL,
     lease text NOT NULL,
     type text NOT NULL,
     id text NOT NULL,
     PRIMARY KEY (namespace, lease, type, id),
     FOREIGN KEY (namespace, lease) REFERENCES metadata_leases (namespace, id) ON DELETE CASCADE)`,
];

/** Where the stores announce changes (containerd topics and event types). */
export interface Publisher {
  (namespace: string, topic: string, typeUrl: `containerd.events.${string}`, type: { encode(m: any): { finish(): Uint8Array } }, event: unknown): void;
}

const encAny = (a: Any | undefined) => (a ? Buffer.from(Any.encode(a).finish()) : null);
const decAny = (b: Buffer | null) => (b ? Any.decode(b) : undefined);

function encExtensions(ext: Record<string, Any>): Buffer | null {
  // Stored as a containers Container message holding only extensions: one codec, no new format.
  return Object.keys(ext).length ? Buffer.from(capi.Container.encode(capi.Container.fromPartial({ extensions: ext })).finish()) : null;
}
function decExtensions(b: Buffer | null): Record<string, Any> {
  return b ? capi.Container.decode(b).extensions : {};
}

function rowToContainer(r: any): capi.Container {
  return {
    id: r.id,
    labels: r.labels ?? {},
    image: r.image,
    runtime: { name: r.runtime_name, options: decAny(r.runtime_options) },
    spec: decAny(r.spec),
    snapshotter: r.snapshotter,
    snapshotKey: r.snapshot_key,
    createdAt: toTimestamp(r.created_at),
    updatedAt: toTimestamp(r.updated_at),
    extensions: decExtensions(r.extensions),
  };
}

export class MetadataStore {
  constructor(private readonly sql: Sql, private readonly publish: Publisher) {}

  // ---- namespaces ----

  async namespaceGet(name: string): Promise<napi.Namespace> {
    const rows = await this.sql`SELECT name, labels FROM metadata_namespaces WHERE name = ${name}`;
    if (rows.length === 0) throw errNotFound(`namespace ${name}`);
    return { name: rows[0]!.name, labels: rows[0]!.labels };
  }

  async namespaceList(): Promise<napi.Namespace[]> {
    const rows = await this.sql`SELECT name, labels FROM metadata_namespaces ORDER BY name`;
    return rows.map((r) => ({ name: r.name, labels: r.labels }));
  }

  async namespaceCreate(ns: napi.Namespace): Promise<napi.Namespace> {
    validateIdentifier(ns.name);
    validateLabels(ns.labels);
    try {
      await this.sql`INSERT INTO metadata_namespaces (name, labels) VALUES (${ns.name}, ${this.sql.json(ns.labels ?? {})})`;
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`namespace ${ns.name}`);
      throw err;
    }
    this.publish(ns.name, '/namespaces/create', 'containerd.events.NamespaceCreate', evNamespace.NamespaceCreate, { name: ns.name, labels: ns.labels ?? {} });
    return ns;
  }

  /** containerd creates a namespace implicitly on the first write into it. */
  async namespaceEnsure(name: string): Promise<void> {
    await this.sql`INSERT INTO metadata_namespaces (name) VALUES (${name}) ON CONFLICT DO NOTHING`;
  }

  async namespaceUpdate(ns: napi.Namespace, paths: string[]): Promise<napi.Namespace> {
    const cur = await this.namespaceGet(ns.name);
    const { value, rest } = applyMapPaths('labels', cur.labels, ns.labels ?? {}, paths.length ? paths : ['labels']);
    refuseFields('namespace', ns.name, rest);
    validateLabels(value);
    await this.sql`UPDATE metadata_namespaces SET labels = ${this.sql.json(value)} WHERE name = ${ns.name}`;
    this.publish(ns.name, '/namespaces/update', 'containerd.events.NamespaceUpdate', evNamespace.NamespaceUpdate, { name: ns.name, labels: value });
    return { name: ns.name, labels: value };
  }

  async namespaceDelete(name: string): Promise<void> {
    const used = await this.sql`SELECT 1 FROM metadata_containers WHERE namespace = ${name}
      UNION ALL SELECT 1 FROM metadata_leases WHERE namespace = ${name} LIMIT 1`;
    if (used.length > 0) throw errFailedPrecondition(`namespace "${name}" must be empty, but it still has containers or leases`);
    const rows = await this.sql`DELETE FROM metadata_namespaces WHERE name = ${name} RETURNING name`;
    if (rows.length === 0) throw errNotFound(`namespace ${name}`);
    this.publish(name, '/namespaces/delete', 'containerd.events.NamespaceDelete', evNamespace.NamespaceDelete, { name });
  }

  // ---- containers ----

  async containerGet(ctx: CallContext, id: string): Promise<capi.Container> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`SELECT * FROM metadata_containers WHERE namespace = ${ns} AND id = ${id}`;
    if (rows.length === 0) throw errNotFound(`container "${id}" in namespace "${ns}"`);
    return rowToContainer(rows[0]);
  }

  async *containerList(ctx: CallContext): AsyncGenerator<capi.Container[]> {
    const ns = namespaceRequired(ctx);
    // TODO(filters): containerd's filter language arrives with the filters lib (issue 3).
    let after = '';
    for (;;) {
      const rows = await this.sql`SELECT * FROM metadata_containers WHERE namespace = ${ns} AND id > ${after} ORDER BY id LIMIT 500`;
      if (rows.length === 0) return;
      yield rows.map(rowToContainer);
      after = rows[rows.length - 1]!.id;
    }
  }

  private validateContainer(c: capi.Container): void {
    try {
      validateIdentifier(c.id);
    } catch (err) {
      throw errInvalidArgument(`container.ID ${(err as Error).message.replace(/: invalid argument$/, '')}`);
    }
    validateLabels(c.labels);
    if (!c.runtime?.name) throw errInvalidArgument('container.Runtime.Name must be set');
    if (!c.spec) throw errInvalidArgument('container.Spec must be set');
    if (c.snapshotKey && !c.snapshotter) throw errInvalidArgument('container.Snapshotter must be set if container.SnapshotKey is set');
  }

  async containerCreate(ctx: CallContext, c: capi.Container): Promise<capi.Container> {
    const ns = namespaceRequired(ctx);
    this.validateContainer(c);
    let row;
    try {
      await this.namespaceEnsure(ns);
      [row] = await this.sql`INSERT INTO metadata_containers
        (namespace, id, labels, image, runtime_name, runtime_options, spec, snapshotter, snapshot_key, extensions)
        VALUES (${ns}, ${c.id}, ${this.sql.json(c.labels ?? {})}, ${c.image}, ${c.runtime!.name}, ${encAny(c.runtime!.options)},
                ${encAny(c.spec)}, ${c.snapshotter}, ${c.snapshotKey}, ${encExtensions(c.extensions ?? {})})
        RETURNING *`;
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`container "${c.id}"`);
      throw err;
    }
    if (ctx.lease) await this.leaseAddResource(ctx, ctx.lease, { type: 'containers', id: c.id }).catch(() => {});
    const out = rowToContainer(row);
    this.publish(ns, '/containers/create', 'containerd.events.ContainerCreate', evContainer.ContainerCreate, {
      id: c.id, image: c.image, runtime: { name: c.runtime!.name, options: c.runtime!.options },
    });
    return out;
  }

  async containerUpdate(ctx: CallContext, c: capi.Container, paths: string[]): Promise<capi.Container> {
    const ns = namespaceRequired(ctx);
    return this.sql.begin(async (tx) => {
      const rows = await tx`SELECT * FROM metadata_containers WHERE namespace = ${ns} AND id = ${c.id} FOR UPDATE`;
      if (rows.length === 0) throw errNotFound(`cannot update container "${c.id}" in namespace "${ns}"`);
      const cur = rowToContainer(rows[0]);
      let next: capi.Container;
      if (paths.length === 0) {
        // No mask: everything but immutable fields is replaced (containerd's behaviour).
        if (c.runtime?.name && c.runtime.name !== cur.runtime?.name) throw errInvalidArgument(`container.Runtime.Name field is immutable`);
        if (c.snapshotter && c.snapshotter !== cur.snapshotter) throw errInvalidArgument(`container.Snapshotter field is immutable`);
        next = { ...cur, labels: c.labels, spec: c.spec, extensions: c.extensions, image: c.image, snapshotKey: c.snapshotKey };
      } else {
        const l = applyMapPaths('labels', cur.labels, c.labels ?? {}, paths);
        const e = applyMapPaths('extensions', cur.extensions, c.extensions ?? {}, l.rest, (v) => !v);
        next = { ...cur, labels: l.value, extensions: e.value };
        const rest: string[] = [];
        for (const p of e.rest) {
          if (p === 'spec') next.spec = c.spec;
          else if (p === 'image') next.image = c.image;
          else if (p === 'snapshotkey') next.snapshotKey = c.snapshotKey;
          else rest.push(p);
        }
        refuseFields('container', c.id, rest);
      }
      this.validateContainer(next);
      const [row] = await tx`UPDATE metadata_containers SET labels = ${tx.json(next.labels)}, image = ${next.image},
        spec = ${encAny(next.spec)}, snapshot_key = ${next.snapshotKey}, extensions = ${encExtensions(next.extensions)}, updated_at = now()
        WHERE namespace = ${ns} AND id = ${c.id} RETURNING *`;
      const out = rowToContainer(row);
      this.publish(ns, '/containers/update', 'containerd.events.ContainerUpdate', evContainer.ContainerUpdate, {
        id: out.id, image: out.image, labels: out.labels, snapshotKey: out.snapshotKey,
      });
      return out;
    });
  }

  async containerDelete(ctx: CallContext, id: string): Promise<void> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`DELETE FROM metadata_containers WHERE namespace = ${ns} AND id = ${id} RETURNING id`;
    if (rows.length === 0) throw errNotFound(`cannot delete container "${id}" in namespace "${ns}"`);
    this.publish(ns, '/containers/delete', 'containerd.events.ContainerDelete', evContainer.ContainerDelete, { id });
  }

  // ---- leases ----

  async leaseCreate(ctx: CallContext, id: string, labels: Record<string, string>): Promise<lapi.Lease> {
    const ns = namespaceRequired(ctx);
    // No id: the server picks one, as containerd's leases service does (WithRandomID).
    // Lease ids are not held to the identifier rules; containerd's random ids may not pass.
    if (!id) id = `${process.hrtime.bigint() % 1_000_000_000n}-${randomBytes(3).toString('base64url')}`;
    validateLabels(labels);
    try {
      await this.namespaceEnsure(ns);
      const [r] = await this.sql`INSERT INTO metadata_leases (namespace, id, labels) VALUES (${ns}, ${id}, ${this.sql.json(labels ?? {})}) RETURNING *`;
      return { id: r!.id, labels: r!.labels, createdAt: toTimestamp(r!.created_at) };
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`lease "${id}"`);
      throw err;
    }
  }

  async leaseDelete(ctx: CallContext, id: string): Promise<void> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`DELETE FROM metadata_leases WHERE namespace = ${ns} AND id = ${id} RETURNING id`;
    if (rows.length === 0) throw errNotFound(`lease "${id}"`);
  }

  async leaseList(ctx: CallContext): Promise<lapi.Lease[]> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`SELECT * FROM metadata_leases WHERE namespace = ${ns} ORDER BY id`;
    return rows.map((r) => ({ id: r.id, labels: r.labels, createdAt: toTimestamp(r.created_at) }));
  }

  async leaseAddResource(ctx: CallContext, lease: string, res: lapi.Resource): Promise<void> {
    const ns = namespaceRequired(ctx);
    if (!res.id || !res.type) throw errInvalidArgument('resource id and type must be set');
    const have = await this.sql`SELECT 1 FROM metadata_leases WHERE namespace = ${ns} AND id = ${lease}`;
    if (have.length === 0) throw errNotFound(`lease "${lease}"`);
    await this.sql`INSERT INTO metadata_lease_resources (namespace, lease, type, id) VALUES (${ns}, ${lease}, ${res.type}, ${res.id}) ON CONFLICT DO NOTHING`;
  }

  async leaseDeleteResource(ctx: CallContext, lease: string, res: lapi.Resource): Promise<void> {
    const ns = namespaceRequired(ctx);
    const have = await this.sql`SELECT 1 FROM metadata_leases WHERE namespace = ${ns} AND id = ${lease}`;
    if (have.length === 0) throw errNotFound(`lease "${lease}"`);
    await this.sql`DELETE FROM metadata_lease_resources WHERE namespace = ${ns} AND lease = ${lease} AND type = ${res.type} AND id = ${res.id}`;
  }

  async leaseListResources(ctx: CallContext, lease: string): Promise<lapi.Resource[]> {
    const ns = namespaceRequired(ctx);
    const have = await this.sql`SELECT 1 FROM metadata_leases WHERE namespace = ${ns} AND id = ${lease}`;
    if (have.length === 0) throw errNotFound(`lease "${lease}"`);
    const rows = await this.sql`SELECT type, id FROM metadata_lease_resources WHERE namespace = ${ns} AND lease = ${lease} ORDER BY type, id`;
    return rows.map((r) => ({ type: r.type, id: r.id }));
  }
}
