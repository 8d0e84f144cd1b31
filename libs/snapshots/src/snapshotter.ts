// containerd's overlayfs and native snapshotters, with records in PostgreSQL keyed by
// (node, snapshotter, namespace, key) and data under <root>/<snapshotter>/snapshots/<id>.
// Mounts, kinds, parent rules and error classes follow containerd 1.6's
// snapshots/overlay, snapshots/native and snapshots/storage.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Sql } from '@flotilla/db';
import { sqlState, UNIQUE_VIOLATION } from '@flotilla/db';
import { errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound } from '@flotilla/errdefs';
import { validateLabels } from '@flotilla/identifiers';

const execFileP = promisify(execFile);

export const Kind = { Unknown: 0, View: 1, Active: 2, Committed: 3 } as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

export interface SnapshotMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: Kind;
  labels: Record<string, string>;
  createdAt: Date;
  updatedAt: Date;
}

export type SnapshotterName = 'overlayfs' | 'native';
export const SNAPSHOTTERS: readonly SnapshotterName[] = ['overlayfs', 'native'];

export const snapshotMigrations = [
  `CREATE TABLE snapshots_snapshots (
     id bigserial UNIQUE,
     node text NOT NULL,
     snapshotter text NOT NULL,
     namespace text NOT NULL,
     key text NOT NULL,
     parent text NOT NULL DEFAULT '',
     kind smallint NOT NULL,
     labels jsonb NOT NULL DEFAULT '{}',
     size bigint NOT NULL DEFAULT 0,
     inodes bigint NOT NULL DEFAULT 0,
     created_at timestamptz NOT NULL DEFAULT now(),
     updated_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (node, snapshotter, namespace, key))`,
  `CREATE INDEX snapshots_by_parent ON snapshots_snapshots (node, snapshotter, namespace, parent)`,
];

interface Row {
  id: string;
  key: string;
  parent: string;
  kind: number;
  labels: Record<string, string>;
  size: string;
  inodes: string;
  created_at: Date;
  updated_at: Date;
}

function toInfo(r: Row): SnapshotInfo {
  return { name: r.key, parent: r.parent, kind: r.kind as Kind, labels: r.labels ?? {}, createdAt: r.created_at, updatedAt: r.updated_at };
}

/** Whether the kernel's overlay module knows "index=off" (containerd adds it when it does). */
function overlayIndexOff(): boolean {
  return existsSync('/sys/module/overlay/parameters/index');
}

export class Snapshotter {
  private readonly indexOff = overlayIndexOff();
  constructor(
    private readonly sql: Sql,
    readonly node: string,
    readonly name: SnapshotterName,
    /** This snapshotter's data directory. */
    readonly root: string,
  ) {}

  async init(): Promise<void> {
    await fs.mkdir(path.join(this.root, 'snapshots'), { recursive: true, mode: 0o700 });
  }

  private dir(id: string): string {
    return path.join(this.root, 'snapshots', id);
  }
  private fsPath(id: string): string {
    return path.join(this.dir(id), 'fs');
  }

  private async row(ns: string, key: string, sql: Sql = this.sql): Promise<Row> {
    const rows = await sql<Row[]>`SELECT id, key, parent, kind, labels, size, inodes, created_at, updated_at FROM snapshots_snapshots
      WHERE node = ${this.node} AND snapshotter = ${this.name} AND namespace = ${ns} AND key = ${key}`;
    if (rows.length === 0) throw errNotFound(`snapshot ${key}`);
    return rows[0]!;
  }

  /** Parent ids, nearest first. */
  private async parentIds(ns: string, parent: string): Promise<string[]> {
    const ids: string[] = [];
    for (let p = parent; p; ) {
      const r = await this.row(ns, p);
      ids.push(r.id);
      p = r.parent;
    }
    return ids;
  }

  private async mountsFor(ns: string, r: Row): Promise<SnapshotMount[]> {
    const parents = await this.parentIds(ns, r.parent);
    if (this.name === 'native') {
      // native: every snapshot is a full copy; views are read-only binds of their own copy.
      return [{ type: 'bind', source: this.fsPath(r.id), target: '', options: [r.kind === Kind.View ? 'ro' : 'rw', 'rbind'] }];
    }
    if (parents.length === 0) {
      return [{ type: 'bind', source: this.fsPath(r.id), target: '', options: [r.kind === Kind.View ? 'ro' : 'rw', 'rbind'] }];
    }
    const options: string[] = [];
    if (this.indexOff) options.push('index=off');
    if (r.kind === Kind.Active) {
      options.push(`workdir=${path.join(this.dir(r.id), 'work')}`, `upperdir=${this.fsPath(r.id)}`);
    } else if (parents.length === 1) {
      return [{ type: 'bind', source: this.fsPath(parents[0]!), target: '', options: ['ro', 'rbind'] }];
    }
    options.push(`lowerdir=${parents.map((id) => this.fsPath(id)).join(':')}`);
    return [{ type: 'overlay', source: 'overlay', target: '', options }];
  }

  private async create(kind: Kind, ns: string, key: string, parent: string, labels: Record<string, string>): Promise<SnapshotMount[]> {
    if (!key) throw errInvalidArgument('snapshot key must not be empty');
    validateLabels(labels);
    let row: Row;
    try {
      row = await this.sql.begin(async (tx) => {
        if (parent) {
          const rows = await tx<Row[]>`SELECT id, kind FROM snapshots_snapshots
            WHERE node = ${this.node} AND snapshotter = ${this.name} AND namespace = ${ns} AND key = ${parent} FOR SHARE`;
          if (rows.length === 0) throw errNotFound(`parent snapshot ${parent}`);
          if (rows[0]!.kind !== Kind.Committed) throw errInvalidArgument(`parent ${JSON.stringify(parent)} is not committed snapshot`);
        }
        const [r] = await tx<Row[]>`INSERT INTO snapshots_snapshots (node, snapshotter, namespace, key, parent, kind, labels)
          VALUES (${this.node}, ${this.name}, ${ns}, ${key}, ${parent}, ${kind}, ${tx.json(labels)})
          RETURNING id, key, parent, kind, labels, size, inodes, created_at, updated_at`;
        return r!;
      }) as Row;
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`snapshot ${key}`);
      throw err;
    }
    try {
      const dir = this.dir(row.id);
      await fs.mkdir(dir, { mode: 0o700 });
      await fs.mkdir(this.fsPath(row.id), { mode: 0o755 });
      if (this.name === 'overlayfs' && kind === Kind.Active) await fs.mkdir(path.join(dir, 'work'), { mode: 0o711 });
      if (this.name === 'native' && parent) {
        // native copies the parent's tree, preserving owners, modes, links and xattrs.
        const p = await this.row(ns, parent);
        await execFileP('cp', ['-a', '--', `${this.fsPath(p.id)}/.`, this.fsPath(row.id)]);
      }
      return await this.mountsFor(ns, row);
    } catch (err) {
      await this.sql`DELETE FROM snapshots_snapshots WHERE id = ${row.id}`;
      await fs.rm(this.dir(row.id), { recursive: true, force: true });
      throw err;
    }
  }

  prepare(ns: string, key: string, parent = '', labels: Record<string, string> = {}): Promise<SnapshotMount[]> {
    return this.create(Kind.Active, ns, key, parent, labels);
  }

  view(ns: string, key: string, parent = '', labels: Record<string, string> = {}): Promise<SnapshotMount[]> {
    return this.create(Kind.View, ns, key, parent, labels);
  }

  async mounts(ns: string, key: string): Promise<SnapshotMount[]> {
    const r = await this.row(ns, key);
    if (r.kind !== Kind.Active && r.kind !== Kind.View) {
      throw errFailedPrecondition(`requested snapshot ${key} not active or view`);
    }
    return this.mountsFor(ns, r);
  }

  async commit(ns: string, name: string, key: string, labels: Record<string, string> = {}): Promise<void> {
    validateLabels(labels);
    const r = await this.row(ns, key);
    if (r.kind !== Kind.Active) throw errFailedPrecondition(`requested snapshot ${key} not active`);
    const usage = await diskUsage(this.fsPath(r.id));
    try {
      await this.sql`UPDATE snapshots_snapshots SET key = ${name}, kind = ${Kind.Committed}, labels = ${this.sql.json(labels)},
        size = ${usage.size}, inodes = ${usage.inodes}, updated_at = now() WHERE id = ${r.id}`;
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`snapshot ${name}`);
      throw err;
    }
    if (this.name === 'overlayfs') await fs.rm(path.join(this.dir(r.id), 'work'), { recursive: true, force: true });
  }

  async remove(ns: string, key: string): Promise<void> {
    const id = await this.sql.begin(async (tx) => {
      const r = await this.row(ns, key, tx as unknown as Sql);
      const kids = await tx`SELECT 1 FROM snapshots_snapshots WHERE node = ${this.node} AND snapshotter = ${this.name}
        AND namespace = ${ns} AND parent = ${key} LIMIT 1`;
      if (kids.length > 0) throw errFailedPrecondition('cannot remove snapshot with child');
      await tx`DELETE FROM snapshots_snapshots WHERE id = ${r.id}`;
      return r.id;
    });
    await fs.rm(this.dir(id as string), { recursive: true, force: true });
  }

  async stat(ns: string, key: string): Promise<SnapshotInfo> {
    return toInfo(await this.row(ns, key));
  }

  /** Only labels are mutable (containerd: "labels" or "labels.<key>" paths). */
  async update(ns: string, info: { name: string; labels: Record<string, string> }, paths: string[]): Promise<SnapshotInfo> {
    const r = await this.row(ns, info.name);
    let labels = { ...r.labels };
    if (paths.length === 0) labels = { ...info.labels };
    for (const p of paths) {
      if (p === 'labels') labels = { ...info.labels };
      else if (p.startsWith('labels.')) {
        const k = p.slice(7);
        if (info.labels[k]) labels[k] = info.labels[k]!;
        else delete labels[k];
      } else throw errInvalidArgument(`cannot update ${JSON.stringify(p)} field on snapshot ${JSON.stringify(info.name)}`);
    }
    validateLabels(labels);
    const [row] = await this.sql<Row[]>`UPDATE snapshots_snapshots SET labels = ${this.sql.json(labels)}, updated_at = now()
      WHERE id = ${r.id} RETURNING id, key, parent, kind, labels, size, inodes, created_at, updated_at`;
    return toInfo(row!);
  }

  async *list(ns: string): AsyncGenerator<SnapshotInfo[]> {
    let after = '';
    for (;;) {
      const rows = await this.sql<Row[]>`SELECT id, key, parent, kind, labels, size, inodes, created_at, updated_at FROM snapshots_snapshots
        WHERE node = ${this.node} AND snapshotter = ${this.name} AND namespace = ${ns} AND key > ${after} ORDER BY key LIMIT 500`;
      if (rows.length === 0) return;
      yield rows.map(toInfo);
      after = rows[rows.length - 1]!.key;
    }
  }

  async usage(ns: string, key: string): Promise<{ size: number; inodes: number }> {
    const r = await this.row(ns, key);
    if (r.kind === Kind.Committed) return { size: Number(r.size), inodes: Number(r.inodes) };
    return diskUsage(this.fsPath(r.id));
  }

  /** Removes data directories that no record points at (left by a crash mid-remove). */
  async cleanup(): Promise<void> {
    const rows = await this.sql`SELECT id FROM snapshots_snapshots WHERE node = ${this.node} AND snapshotter = ${this.name}`;
    const live = new Set(rows.map((r) => String(r.id)));
    for (const d of await fs.readdir(path.join(this.root, 'snapshots'))) {
      if (!live.has(d)) await fs.rm(this.dir(d), { recursive: true, force: true });
    }
  }
}

/** Bytes and inodes under a directory, counting each hardlinked inode once (as containerd's fs.DiskUsage). */
export async function diskUsage(root: string): Promise<{ size: number; inodes: number }> {
  const seen = new Set<string>();
  let size = 0;
  const walk = async (p: string): Promise<void> => {
    const st = await fs.lstat(p);
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      size += st.blocks * 512;
    }
    if (st.isDirectory()) for (const e of await fs.readdir(p)) await walk(path.join(p, e));
  };
  await walk(root);
  return { size, inodes: seen.size };
}
