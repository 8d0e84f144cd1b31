// containerd's container store (metadata/containers.go) over PostgreSQL: validation, update
// masks, filters and error texts as containerd's, and the /containers/* events.
import { Any, containers as capi, evContainer, toTimestamp } from '@flotilla/api';
import type { CallContext } from '@flotilla/bus';
import { type BinaryRow, literal, selectBinary, type Sql, sqlState, timestamptzMs, UNIQUE_VIOLATION } from '@flotilla/db';
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
 * encode them again was most of the metadata service's work. Written straight into one
 * buffer of the exact size (a general protobuf writer's growing and copying cost more
 * than the rest of a list).
 */
function rowToContainerBytes(r: any, asField1 = false): Buffer {
  const created = toTimestamp(r.created_at);
  const updated = toTimestamp(r.updated_at);
  // Negative seconds need int64's ten-byte form: leave those (never seen) to the codec.
  if (created.seconds < 0 || updated.seconds < 0) {
    const m = Buffer.from(capi.Container.encode(rowToContainer(r)).finish());
    return asField1 ? asField(1, m) : m;
  }
  const labels = Object.entries((r.labels ?? {}) as Record<string, string>).map(([k, v]) => {
    const kl = Buffer.byteLength(k, 'utf8');
    const vl = Buffer.byteLength(v, 'utf8');
    return { k, v, kl, vl, len: (kl ? field(kl) : 0) + (vl ? field(vl) : 0) };
  });
  const idL = Buffer.byteLength(r.id, 'utf8');
  const imageL = Buffer.byteLength(r.image, 'utf8');
  const rtNameL = Buffer.byteLength(r.runtime_name, 'utf8');
  const rtLen = (rtNameL ? field(rtNameL) : 0) + (r.runtime_options ? field(r.runtime_options.length) : 0);
  const snL = Buffer.byteLength(r.snapshotter, 'utf8');
  const skL = Buffer.byteLength(r.snapshot_key, 'utf8');
  const cL = tsLen(created);
  const uL = tsLen(updated);
  let size = (idL ? field(idL) : 0) + (imageL ? field(imageL) : 0) + field(rtLen) + (r.spec ? field(r.spec.length) : 0)
    + (snL ? field(snL) : 0) + (skL ? field(skL) : 0) + field(cL) + field(uL) + (r.extensions ? r.extensions.length : 0);
  for (const l of labels) size += field(l.len);
  const b = Buffer.allocUnsafe(asField1 ? field(size) : size);
  let p = asField1 ? putHead(b, 0, 10, size) : 0;
  const start = p;
  p = putStr(b, p, 10, r.id, idL);
  for (const l of labels) {
    p = putHead(b, p, 18, l.len);
    p = putStr(b, p, 10, l.k, l.kl);
    p = putStr(b, p, 18, l.v, l.vl);
  }
  p = putStr(b, p, 26, r.image, imageL);
  p = putHead(b, p, 34, rtLen);
  p = putStr(b, p, 10, r.runtime_name, rtNameL);
  if (r.runtime_options) p = putBytes(b, p, 18, r.runtime_options);
  if (r.spec) p = putBytes(b, p, 42, r.spec);
  p = putStr(b, p, 50, r.snapshotter, snL);
  p = putStr(b, p, 58, r.snapshot_key, skL);
  p = putTs(b, p, 66, created, cL);
  p = putTs(b, p, 74, updated, uL);
  // Stored as a Container holding only its extensions (field 10): appended as is.
  if (r.extensions) {
    b.set(r.extensions, p);
    p += r.extensions.length;
  }
  if (p - start !== size) throw new Error(`container ${r.id}: encoded ${p - start} of ${size} bytes`);
  return b;
}

/** A length-delimited field of n bytes with a one-byte tag. */
const field = (n: number) => 1 + varintLen(n) + n;
const tsLen = (t: { seconds: number; nanos: number }) => (t.seconds !== 0 ? 1 + varintLen(t.seconds) : 0) + (t.nanos !== 0 ? 1 + varintLen(t.nanos) : 0);

function putHead(b: Buffer, p: number, tag: number, n: number): number {
  b[p++] = tag;
  return putVarint(b, p, n);
}

/** A string field, omitted when empty (proto3). */
function putStr(b: Buffer, p: number, tag: number, v: string, n: number): number {
  if (!n) return p;
  p = putHead(b, p, tag, n);
  return p + b.write(v, p, 'utf8');
}

function putBytes(b: Buffer, p: number, tag: number, v: Uint8Array): number {
  p = putHead(b, p, tag, v.length);
  b.set(v, p);
  return p + v.length;
}

function putTs(b: Buffer, p: number, tag: number, t: { seconds: number; nanos: number }, n: number): number {
  p = putHead(b, p, tag, n);
  if (t.seconds !== 0) {
    b[p++] = 8;
    p = putVarint(b, p, t.seconds);
  }
  if (t.nanos !== 0) {
    b[p++] = 16;
    p = putVarint(b, p, t.nanos);
  }
  return p;
}

function varintLen(n: number): number {
  let l = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    l++;
  }
  return l;
}

function putVarint(b: Buffer, p: number, n: number): number {
  while (n >= 0x80) {
    b[p++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  b[p++] = n;
  return p;
}

/** `msg` as field `n` of an enclosing message (ListContainerMessage.container, ListContainersResponse.containers). */
export function asField(n: number, msg: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(1 + varintLen(msg.length) + msg.length);
  b[0] = (n << 3) | 2;
  b.set(msg, putVarint(b, 1, msg.length));
  return b;
}

/** Rows per page of a list: ~3 MB with containerd's default spec. */
const PAGE = 1000;
/**
 * A page walks the primary key from where the last one ended. Until the table has been
 * analysed (right after a burst of creates: autovacuum comes within a minute or so), the
 * planner expects a few dozen rows and reads every remaining row of the namespace with a
 * bitmap scan, then sorts them for each page: 10k containers cost PostgreSQL ~350 ms of CPU
 * per list instead of ~40. Sorting and bitmap scans off for the page query leave it the
 * index scan, whatever the statistics say.
 */
const PAGE_PLAN = { enable_sort: 'off', enable_bitmapscan: 'off' };

/**
 * The columns a row is encoded from when it has no stored message (see `message` in
 * store.ts), in `legacyRow`'s order. Selected only for such rows, so a list of rows that
 * have one reads just their ids and messages.
 */
const COLUMNS = ['labels::text', 'image', 'runtime_name', 'runtime_options', 'spec', 'snapshotter', 'snapshot_key', 'extensions', 'created_at', 'updated_at'];
/** What filters look at (labels, image, runtime name): the first three of COLUMNS. */
const FILTERED = 3;

/** A list page's select: `id, message, COLUMNS...`, COLUMNS NULL where the message is stored, unless filters need them. */
function listSelect(filtering: boolean): string {
  const cols = COLUMNS.map((c, i) => (filtering && i < FILTERED ? c : `CASE WHEN message IS NULL THEN ${c} END`));
  return `SELECT id, message, ${cols.join(', ')} FROM metadata_containers`;
}

/** A row without a stored message, read in binary format, as the row Postgres.js gives (timestamps as milliseconds, as its Dates have). */
function legacyRow(f: BinaryRow): any {
  return {
    id: f[0]!.toString('utf8'),
    labels: JSON.parse(f[2]!.toString('utf8')),
    image: f[3]!.toString('utf8'),
    runtime_name: f[4]!.toString('utf8'),
    runtime_options: f[5],
    spec: f[6],
    snapshotter: f[7]!.toString('utf8'),
    snapshot_key: f[8]!.toString('utf8'),
    extensions: f[9],
    created_at: timestamptzMs(f[10]!),
    updated_at: timestamptzMs(f[11]!),
  };
}

/** The filter view of a row read with filter columns. */
function filterView(f: BinaryRow): capi.Container {
  return rowView({ id: f[0]!.toString('utf8'), labels: JSON.parse(f[2]!.toString('utf8')), image: f[3]!.toString('utf8'), runtime_name: f[4]!.toString('utf8') });
}

/**
 * Labels in the order the jsonb column gives them back (PostgreSQL sorts an object's keys
 * by byte length, then bytewise), as an object built like JSON.parse builds one, so a
 * message encoded from them is byte for byte the one encoded from the row read back.
 */
function jsonbOrdered(labels: Record<string, string>): Record<string, string> {
  const keys = Object.keys(labels).map((k) => ({ k, b: Buffer.from(k, 'utf8') }));
  keys.sort((x, y) => x.b.length - y.b.length || Buffer.compare(x.b, y.b));
  return Object.fromEntries(keys.map(({ k }) => [k, labels[k]!]));
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

  /**
   * As a GetContainerResponse (the Container as field 1), from the stored message when the
   * row has one.
   */
  async getEncoded(ctx: CallContext, id: string): Promise<Buffer> {
    const ns = namespaceRequired(ctx);
    const [row] = await this.sql`SELECT message FROM metadata_containers WHERE namespace = ${ns} AND id = ${id}`;
    if (!row) throw errNotFound(`container "${id}" in namespace "${ns}"`);
    if (row.message) return row.message as Buffer;
    return rowToContainerBytes(await this.row(ns, id), true);
  }

  private async row(ns: string, id: string): Promise<any> {
    const [row] = await this.sql`SELECT * FROM metadata_containers WHERE namespace = ${ns} AND id = ${id}`;
    if (!row) throw errNotFound(`container "${id}" in namespace "${ns}"`);
    return row;
  }

  /**
   * The namespace's containers matching any of `filters`, by id, in pages, decoded from
   * the columns (not the stored messages; tests compare the two).
   */
  async *list(ctx: CallContext, filters: readonly string[] = []): AsyncGenerator<capi.Container[]> {
    const ns = namespaceRequired(ctx);
    const filter = parseFilters(filters);
    let after = '';
    for (;;) {
      const rows = await this.sql`SELECT * FROM metadata_containers WHERE namespace = ${ns} AND id > ${after} ORDER BY id LIMIT ${PAGE}`;
      if (rows.length === 0) return;
      const page = rows.filter((r) => filter.match((p) => fieldOf(rowView(r), p)));
      if (page.length) yield page.map(rowToContainer);
      after = rows[rows.length - 1]!.id;
    }
  }

  /**
   * As `list`, each container encoded as field 1 of its enclosing message: one is a
   * ListContainerMessage, all concatenated a ListContainersResponse. A row's stored message
   * is passed on as read (a view into the COPY data: nothing decoded, encoded or copied);
   * a row without one is encoded from its columns.
   */
  async *listEncoded(ctx: CallContext, filters: readonly string[] = []): AsyncGenerator<Buffer[]> {
    const ns = namespaceRequired(ctx);
    const filter = parseFilters(filters);
    const select = listSelect(filters.length > 0);
    const fetch = (after: string) => selectBinary(this.sql, `${select} WHERE namespace = ${literal(ns)} AND id > ${literal(after)} ORDER BY id LIMIT ${PAGE}`, PAGE_PLAN);
    let next: Promise<BinaryRow[]> | undefined = fetch('');
    while (next) {
      const rows: BinaryRow[] = await next;
      // A short page is the last. Otherwise PostgreSQL reads the next page while this one
      // is sent (the caller may stop early: its result is then dropped).
      next = rows.length < PAGE ? undefined : fetch(rows[rows.length - 1]![0]!.toString('utf8'));
      next?.catch(() => {});
      const page: Buffer[] = [];
      for (const f of rows) {
        if (filters.length && !filter.match((p) => fieldOf(filterView(f), p))) continue;
        page.push(f[1] ?? rowToContainerBytes(legacyRow(f), true));
      }
      if (page.length) yield page;
    }
  }

  /**
   * Stores the message of every row that has none (rows written before the column existed,
   * or by an older replica, or whose message an update without one dropped): run at start-up.
   * A row changed meanwhile (its xmin moved) is left for the next run. Returns how many were stored.
   */
  async encodeMissing(): Promise<number> {
    let done = 0;
    let after = { namespace: '', id: '' };
    for (;;) {
      const rows = await this.sql`SELECT xmin::text AS row_version, * FROM metadata_containers
        WHERE message IS NULL AND (namespace, id) > (${after.namespace}, ${after.id}) ORDER BY namespace, id LIMIT ${PAGE}`;
      if (rows.length === 0) return done;
      await this.sql.begin(async (tx) => {
        // The timestamps as read (milliseconds, what clients were shown of them) go back
        // with the message, so the columns hold exactly what it holds.
        const updated = await Promise.all(rows.map((r) => tx`UPDATE metadata_containers
          SET message = ${rowToContainerBytes(r, true)}, created_at = ${r.created_at}, updated_at = ${r.updated_at}
          WHERE namespace = ${r.namespace} AND id = ${r.id} AND message IS NULL AND xmin::text = ${r.row_version} RETURNING 1`));
        done += updated.filter((u) => u.length).length;
      });
      const last = rows[rows.length - 1]!;
      after = { namespace: last.namespace, id: last.id };
    }
  }

  /** Creates the container; returns it and its message (as field 1, the CreateContainerResponse). */
  async create(ctx: CallContext, c: capi.Container): Promise<{ container: capi.Container; encoded: Buffer }> {
    const ns = namespaceRequired(ctx);
    validated('create container failed validation', c);
    // The timestamps are this process's clock at millisecond precision (what a column read
    // back gives), so the columns and the stored message hold the same instant.
    const now = new Date();
    const row = {
      id: c.id, labels: jsonbOrdered(dropEmpty(c.labels ?? {}, (v) => v === '')), image: c.image, runtime_name: c.runtime!.name,
      runtime_options: encAny(c.runtime!.options), spec: encAny(c.spec), snapshotter: c.snapshotter, snapshot_key: c.snapshotKey,
      extensions: encExtensions(c.extensions), created_at: now, updated_at: now,
    };
    const encoded = rowToContainerBytes(row, true);
    try {
      // The namespace and the container in one statement (one round trip, one commit), as
      // containerd creates both in one transaction.
      await this.sql`WITH ns AS (INSERT INTO metadata_namespaces (name) VALUES (${ns}) ON CONFLICT DO NOTHING)
        INSERT INTO metadata_containers
        (namespace, id, labels, image, runtime_name, runtime_options, spec, snapshotter, snapshot_key, extensions, created_at, updated_at, message)
        VALUES (${ns}, ${row.id}, ${this.sql.json(row.labels)}, ${row.image}, ${row.runtime_name}, ${row.runtime_options},
                ${row.spec}, ${row.snapshotter}, ${row.snapshot_key}, ${row.extensions}, ${now}, ${now}, ${encoded})`;
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`container "${c.id}"`);
      throw err;
    }
    this.publish(ns, '/containers/create', 'containerd.events.ContainerCreate', evContainer.ContainerCreate, {
      id: c.id, image: c.image, runtime: { name: c.runtime!.name, options: c.runtime!.options },
    });
    return { container: rowToContainer(row), encoded };
  }

  /**
   * containerd's Update: without paths, labels, spec, extensions, image and snapshotkey are
   * replaced and the snapshotter and runtime must be unchanged; with paths, only those
   * (labels.<k> and extensions.<k> set or, when empty, remove one key). Returns it and its
   * message (as field 1, the UpdateContainerResponse).
   */
  async update(ctx: CallContext, c: capi.Container, paths: readonly string[]): Promise<{ container: capi.Container; encoded: Buffer }> {
    const ns = namespaceRequired(ctx);
    if (!c.id) throw errInvalidArgument('must specify a container id');
    const out = await this.sql.begin(async (tx) => {
      const rows = await tx`SELECT * FROM metadata_containers WHERE namespace = ${ns} AND id = ${c.id} FOR UPDATE`;
      if (rows.length === 0) {
        // containerd: no bucket for the namespace yet, or no container in it.
        if (!(await this.hasAny(ns))) throw errNotFound(`cannot update container "${c.id}" in namespace "${ns}"`);
        throw errNotFound(`container "${c.id}"`);
      }
      const cur: any = rows[0]!;
      const next = rowToContainer(cur);
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
      const now = new Date();
      // Runtime and snapshotter cannot change. created_at as read, in milliseconds (what
      // clients were shown of it), is written back with the message.
      const row = {
        ...cur, labels: jsonbOrdered(dropEmpty(next.labels, (v) => v === '')), image: next.image, spec: encAny(next.spec),
        snapshot_key: next.snapshotKey, extensions: encExtensions(next.extensions), updated_at: now,
      };
      const encoded = rowToContainerBytes(row, true);
      await tx`UPDATE metadata_containers SET labels = ${tx.json(row.labels)}, image = ${row.image}, spec = ${row.spec},
        snapshot_key = ${row.snapshot_key}, extensions = ${row.extensions}, created_at = ${row.created_at}, updated_at = ${now},
        message = ${encoded}
        WHERE namespace = ${ns} AND id = ${c.id}`;
      return { container: rowToContainer(row), encoded };
    });
    this.publish(ns, '/containers/update', 'containerd.events.ContainerUpdate', evContainer.ContainerUpdate, {
      id: out.container.id, image: out.container.image, labels: out.container.labels, snapshotKey: out.container.snapshotKey,
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
