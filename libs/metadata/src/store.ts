// The metadata service's PostgreSQL store: namespaces (here), containers (containers.ts) and
// the tables of leases (leases.ts), with containerd's validation, error texts and events.
import { containers as capi, namespaces as napi, evNamespace } from '@flotilla/api';
import { type Sql, sqlState, UNIQUE_VIOLATION } from '@flotilla/db';
import { errAlreadyExists, errFailedPrecondition, errNotFound } from '@flotilla/errdefs';
import { validateIdentifier, validateLabels } from '@flotilla/identifiers';
import type { CallContext } from '@flotilla/bus';
import { applyMapPaths, refuseFields } from './fieldpaths.js';
import { ContainerStore } from './containers.js';

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
  // Each container's Container message, encoded as field 1 of its enclosing message (byte
  // for byte a GetContainerResponse, Create/UpdateContainerResponse or ListContainerMessage),
  // written with the columns it is encoded from, so Get and List send it as stored. NULL
  // where not yet written (rows from before this column; the service fills them in at
  // start-up): readers then encode the row from its columns.
  `ALTER TABLE metadata_containers ADD COLUMN message bytea`,
  // Kept in the row (compressed only if the row is still too large once the spec has been
  // compressed and moved out to TOAST): a list then reads no TOAST table. Measured: about
  // half of PostgreSQL's CPU per list of 10k containers with ~1.7 KB specs.
  `ALTER TABLE metadata_containers ALTER COLUMN message SET STORAGE MAIN`,
  // An update that changes the row but not its message (an older replica, a hand edit)
  // drops the message, so a stored message never disagrees with the columns.
  `CREATE FUNCTION metadata_containers_drop_message() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
     IF NEW.message IS NOT DISTINCT FROM OLD.message AND NEW IS DISTINCT FROM OLD THEN NEW.message := NULL; END IF;
     RETURN NEW;
   END $$`,
  `CREATE TRIGGER metadata_containers_drop_message BEFORE UPDATE ON metadata_containers
     FOR EACH ROW EXECUTE FUNCTION metadata_containers_drop_message()`,
];

/** Where the stores announce changes (containerd topics and event types). */
export interface Publisher {
  (namespace: string, topic: string, typeUrl: `containerd.events.${string}`, type: { encode(m: any): { finish(): Uint8Array } }, event: unknown): void;
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

  // ---- containers (ContainerStore in containers.ts) ----

  private containerStore?: ContainerStore;
  private get containers(): ContainerStore {
    return (this.containerStore ??= new ContainerStore(this.sql, this.publish));
  }

  containerGet(ctx: CallContext, id: string): Promise<capi.Container> {
    return this.containers.get(ctx, id);
  }

  /** As containerGet, encoded as a GetContainerResponse (the stored message when there is one). */
  containerGetEncoded(ctx: CallContext, id: string): Promise<Buffer> {
    return this.containers.getEncoded(ctx, id);
  }

  /** Decoded from the columns (containerListEncoded sends the stored messages). */
  containerList(ctx: CallContext, filters: readonly string[] = []): AsyncGenerator<capi.Container[]> {
    return this.containers.list(ctx, filters);
  }

  /** As containerList, each container encoded as a ListContainerMessage: the stored message, as stored. */
  containerListEncoded(ctx: CallContext, filters: readonly string[] = []): AsyncGenerator<Buffer[]> {
    return this.containers.listEncoded(ctx, filters);
  }

  /** The container and its encoding as a CreateContainerResponse. */
  containerCreate(ctx: CallContext, c: capi.Container): Promise<{ container: capi.Container; encoded: Buffer }> {
    return this.containers.create(ctx, c);
  }

  /** The container and its encoding as an UpdateContainerResponse. */
  containerUpdate(ctx: CallContext, c: capi.Container, paths: string[]): Promise<{ container: capi.Container; encoded: Buffer }> {
    return this.containers.update(ctx, c, paths);
  }

  /** Stores the message of every container row that has none; returns how many. */
  containerEncodeMissing(): Promise<number> {
    return this.containers.encodeMissing();
  }

  containerDelete(ctx: CallContext, id: string): Promise<void> {
    return this.containers.delete(ctx, id);
  }
}
