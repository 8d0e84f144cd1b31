// containerd's container store (metadata/containers.go) over PostgreSQL: validation, update
// masks, filters and error texts as containerd's, and the /containers/* events.
import { Any, containers as capi, evContainer, toTimestamp } from '@flotilla/api';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import type { CallContext } from '@flotilla/bus';
import { type Sql, sqlState, UNIQUE_VIOLATION } from '@flotilla/db';
import { errAlreadyExists, errInvalidArgument, errNotFound, messageOf } from '@flotilla/errdefs';
import { checkMap, parseFilters } from '@flotilla/filters';
import { namespaceRequired, validateIdentifier, validateLabels } from '@flotilla/identifiers';

/** Where the store announces changes (containerd topics and event types). */
export type ContainerPublisher = (
  namespace: string, topic: string, typeUrl: `containerd.events.${string}`, type: { encode(m: any): { finish(): Uint8Array } }, event: unknown,
) => void;

const encAny = (a: Any | undefined) => (a ? Buffer.from(Any.encode(a).finish()) : null);
const decAny = (b: Buffer | null) => (b ? Any.decode(b) : undefined);

function encExtensions(ext: Record<string, Any> | undefined): Buffer | null {
  // Stored as a containers Container message holding only extensions: one codec, no new format.
  return ext && Object.keys(ext).length ? Buffer.from(capi.Container.encode(capi.Container.fromPartial({ extensions: ext })).finish()) : null;
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

/**
 * The Container message of a row, encoded field by field as Container.encode would, but
 * with the stored spec, runtime options and extensions bytes passed through undecoded:
 * a list of thousands of containers is mostly their specs, and decoding them only to
 * encode them again was most of the metadata service's work.
 */
function rowToContainerBytes(r: any): Uint8Array {
  const w = new BinaryWriter();
  if (r.id !== '') w.uint32(10).string(r.id);
  for (const [k, v] of Object.entries((r.labels ?? {}) as Record<string, string>)) {
    w.uint32(18).fork();
    if (k !== '') w.uint32(10).string(k);
    if (v !== '') w.uint32(18).string(v);
    w.join();
  }
  if (r.image !== '') w.uint32(26).string(r.image);
  w.uint32(34).fork();
  if (r.runtime_name !== '') w.uint32(10).string(r.runtime_name);
  if (r.runtime_options) w.uint32(18).bytes(r.runtime_options);
  w.join();
  if (r.spec) w.uint32(42).bytes(r.spec);
  if (r.snapshotter !== '') w.uint32(50).string(r.snapshotter);
  if (r.snapshot_key !== '') w.uint32(58).string(r.snapshot_key);
  for (const [tag, d] of [[66, r.created_at], [74, r.updated_at]] as const) {
    const t = toTimestamp(d);
    w.uint32(tag).fork();
    if (t.seconds !== 0) w.uint32(8).int64(t.seconds);
    if (t.nanos !== 0) w.uint32(16).int32(t.nanos);
    w.join();
  }
  // Stored as a Container holding only its extensions (field 10): appended as is.
  if (r.extensions) w.raw(r.extensions);
  return w.finish();
}

/** `msg` as field `n` of an enclosing message (ListContainerMessage.container, ListContainersResponse.containers). */
export function asField(n: number, msg: Uint8Array): Uint8Array {
  return new BinaryWriter().uint32((n << 3) | 2).bytes(msg).finish();
}

/** What filters look at: no spec, no extensions. */
function rowView(r: any): capi.Container {
  return { id: r.id, labels: r.labels ?? {}, image: r.image, runtime: { name: r.runtime_name, options: undefined }, spec: undefined, snapshotter: '', snapshotKey: '', createdAt: undefined, updatedAt: undefined, extensions: {} };
}

/** containerd's adaptContainer: id, runtime.name, image, labels.<key>. */
function fieldOf(c: capi.Container, path: readonly string[]): [string, boolean] {
  switch (path[0]) {
    case 'id': return [c.id, c.id.length > 0];
    case 'runtime': return path[1] === 'name' ? [c.runtime?.name ?? '', !!c.runtime?.name] : ['', false];
    case 'image': return [c.image, c.image.length > 0];
    case 'labels': return checkMap(path.slice(1), c.labels);
    default: return ['', false];
  }
}

/** Labels with empty values are not kept (containerd's boltutil.WriteLabels drops them). */
function dropEmpty<T>(m: Record<string, T>, empty: (v: T) => boolean): Record<string, T> {
  return Object.fromEntries(Object.entries(m).filter(([, v]) => !empty(v)));
}

function validateContainer(c: capi.Container): void {
  try {
    validateIdentifier(c.id);
  } catch (err) {
    throw errInvalidArgument(`container.ID: ${messageOf(err).replace(/: invalid argument$/, '')}`);
  }
  for (const k of Object.keys(c.extensions ?? {})) {
    if (!k) throw errInvalidArgument('container.Extension keys must not be zero-length');
  }
  try {
    validateLabels(c.labels);
  } catch (err) {
    throw errInvalidArgument(`containers.Labels: ${messageOf(err).replace(/: invalid argument$/, '')}`);
  }
  if (!c.runtime?.name) throw errInvalidArgument('container.Runtime.Name must be set');
  if (!c.spec) throw errInvalidArgument('container.Spec must be set');
  if (c.snapshotKey && !c.snapshotter) throw errInvalidArgument('container.Snapshotter must be set if container.SnapshotKey is set');
}

/** Prefixes a validation failure as containerd does ("create container failed validation: ..."). */
function validated(prefix: string, c: capi.Container): void {
  try {
    validateContainer(c);
  } catch (err) {
    throw errInvalidArgument(`${prefix}: ${messageOf(err).replace(/: invalid argument$/, '')}`);
  }
}

export class ContainerStore {
  constructor(private readonly sql: Sql, private readonly publish: ContainerPublisher) {}

  /** Whether the namespace has any container (containerd's containers bucket exists). */
  private async hasAny(ns: string): Promise<boolean> {
    return (await this.sql`SELECT 1 FROM metadata_containers WHERE namespace = ${ns} LIMIT 1`).length > 0;
  }

  async get(ctx: CallContext, id: string): Promise<capi.Container> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`SELECT * FROM metadata_containers WHERE namespace = ${ns} AND id = ${id}`;
    if (rows.length === 0) throw errNotFound(`container "${id}" in namespace "${ns}"`);
    return rowToContainer(rows[0]);
  }

  /** The namespace's containers matching any of `filters`, by id, in pages. */
  async *list(ctx: CallContext, filters: readonly string[] = []): AsyncGenerator<capi.Container[]> {
    for await (const rows of this.rows(ctx, filters)) yield rows.map(rowToContainer);
  }

  /** As `list`, each container as its encoded Container message (see rowToContainerBytes). */
  async *listEncoded(ctx: CallContext, filters: readonly string[] = []): AsyncGenerator<Uint8Array[]> {
    for await (const rows of this.rows(ctx, filters)) yield rows.map(rowToContainerBytes);
  }

  /** The namespace's rows matching any of `filters`, by id, in pages. */
  private async *rows(ctx: CallContext, filters: readonly string[]): AsyncGenerator<any[]> {
    const ns = namespaceRequired(ctx);
    const filter = parseFilters(filters);
    let after = '';
    for (;;) {
      const rows = await this.sql`SELECT * FROM metadata_containers WHERE namespace = ${ns} AND id > ${after} ORDER BY id LIMIT 1000`;
      if (rows.length === 0) return;
      const page = rows.filter((r) => filter.match((p) => fieldOf(rowView(r), p)));
      if (page.length) yield page;
      after = rows[rows.length - 1]!.id;
    }
  }

  async create(ctx: CallContext, c: capi.Container): Promise<capi.Container> {
    const ns = namespaceRequired(ctx);
    validated('create container failed validation', c);
    const labels = dropEmpty(c.labels ?? {}, (v) => v === '');
    let row;
    try {
      await this.sql`INSERT INTO metadata_namespaces (name) VALUES (${ns}) ON CONFLICT DO NOTHING`;
      [row] = await this.sql`INSERT INTO metadata_containers
        (namespace, id, labels, image, runtime_name, runtime_options, spec, snapshotter, snapshot_key, extensions)
        VALUES (${ns}, ${c.id}, ${this.sql.json(labels)}, ${c.image}, ${c.runtime!.name}, ${encAny(c.runtime!.options)},
                ${encAny(c.spec)}, ${c.snapshotter}, ${c.snapshotKey}, ${encExtensions(c.extensions)})
        RETURNING *`;
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`container "${c.id}"`);
      throw err;
    }
    const out = rowToContainer(row);
    this.publish(ns, '/containers/create', 'containerd.events.ContainerCreate', evContainer.ContainerCreate, {
      id: c.id, image: c.image, runtime: { name: c.runtime!.name, options: c.runtime!.options },
    });
    return out;
  }

  /**
   * containerd's Update: without paths, labels, spec, extensions, image and snapshotkey are
   * replaced and the snapshotter and runtime must be unchanged; with paths, only those
   * (labels.<k> and extensions.<k> set or, when empty, remove one key).
   */
  async update(ctx: CallContext, c: capi.Container, paths: readonly string[]): Promise<capi.Container> {
    const ns = namespaceRequired(ctx);
    if (!c.id) throw errInvalidArgument('must specify a container id');
    const out = await this.sql.begin(async (tx) => {
      const rows = await tx`SELECT * FROM metadata_containers WHERE namespace = ${ns} AND id = ${c.id} FOR UPDATE`;
      if (rows.length === 0) {
        // containerd: no bucket for the namespace yet, or no container in it.
        if (!(await this.hasAny(ns))) throw errNotFound(`cannot update container "${c.id}" in namespace "${ns}"`);
        throw errNotFound(`container "${c.id}"`);
      }
      const next = rowToContainer(rows[0]);
      let fields = [...paths];
      if (fields.length === 0) {
        fields = ['labels', 'spec', 'extensions', 'image', 'snapshotkey'];
        if (next.snapshotter !== c.snapshotter) throw errInvalidArgument('container.Snapshotter field is immutable');
        if (next.runtime?.name !== (c.runtime?.name ?? '')) throw errInvalidArgument('container.Runtime.Name field is immutable');
      }
      for (const p of fields) {
        if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          next.labels = { ...next.labels, [k]: c.labels?.[k] ?? '' };
        } else if (p.startsWith('extensions.')) {
          const k = p.slice('extensions.'.length);
          const v = c.extensions?.[k];
          next.extensions = { ...next.extensions };
          if (v) next.extensions[k] = v;
          else delete next.extensions[k];
        } else if (p === 'labels') next.labels = { ...(c.labels ?? {}) };
        else if (p === 'spec') next.spec = c.spec;
        else if (p === 'extensions') next.extensions = { ...(c.extensions ?? {}) };
        else if (p === 'image') next.image = c.image;
        else if (p === 'snapshotkey') next.snapshotKey = c.snapshotKey;
        else throw errInvalidArgument(`cannot update ${JSON.stringify(p)} field on ${JSON.stringify(c.id)}`);
      }
      validated('update failed validation', next);
      next.labels = dropEmpty(next.labels, (v) => v === '');
      const [row] = await tx`UPDATE metadata_containers SET labels = ${tx.json(next.labels)}, image = ${next.image},
        spec = ${encAny(next.spec)}, snapshot_key = ${next.snapshotKey}, extensions = ${encExtensions(next.extensions)}, updated_at = now()
        WHERE namespace = ${ns} AND id = ${c.id} RETURNING *`;
      return rowToContainer(row);
    });
    this.publish(ns, '/containers/update', 'containerd.events.ContainerUpdate', evContainer.ContainerUpdate, {
      id: out.id, image: out.image, labels: out.labels, snapshotKey: out.snapshotKey,
    });
    return out;
  }

  async delete(ctx: CallContext, id: string): Promise<void> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`DELETE FROM metadata_containers WHERE namespace = ${ns} AND id = ${id} RETURNING id`;
    if (rows.length === 0) {
      if (!(await this.hasAny(ns))) throw errNotFound(`cannot delete container "${id}" in namespace "${ns}"`);
      throw errNotFound(`container ${id}`);
    }
    this.publish(ns, '/containers/delete', 'containerd.events.ContainerDelete', evContainer.ContainerDelete, { id });
  }
}
