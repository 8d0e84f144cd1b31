// The images service's PostgreSQL store, with containerd's validation, errors and events.
import { images as iapi, evImage, toTimestamp, type Descriptor } from '@flotilla/api';
import { type Sql, sqlState, UNIQUE_VIOLATION } from '@flotilla/db';
import { errAlreadyExists, errInvalidArgument, errNotFound } from '@flotilla/errdefs';
import { namespaceRequired, validateLabels } from '@flotilla/identifiers';
import type { CallContext } from '@flotilla/bus';
import { applyMapPaths, refuseFields } from '@flotilla/metadata';

export const imageMigrations = [
  `CREATE TABLE images (
     namespace text NOT NULL,
     name text NOT NULL,
     labels jsonb NOT NULL DEFAULT '{}',
     target_media_type text NOT NULL,
     target_digest text NOT NULL,
     target_size bigint NOT NULL,
     target_annotations jsonb NOT NULL DEFAULT '{}',
     created_at timestamptz NOT NULL DEFAULT now(),
     updated_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (namespace, name))`,
];

export type ImagePublisher = (namespace: string, topic: string, typeUrl: `containerd.events.${string}`, type: { encode(m: any): { finish(): Uint8Array } }, event: unknown) => void;

const DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

function rowToImage(r: any): iapi.Image {
  return {
    name: r.name,
    labels: r.labels ?? {},
    target: { mediaType: r.target_media_type, digest: r.target_digest, size: Number(r.target_size), annotations: r.target_annotations ?? {} },
    createdAt: toTimestamp(r.created_at),
    updatedAt: toTimestamp(r.updated_at),
  };
}

function validateImage(img: iapi.Image): Descriptor {
  if (!img.name) throw errInvalidArgument('image name must not be empty');
  validateLabels(img.labels);
  const t = img.target;
  if (!t || !t.digest || !DIGEST_RE.test(t.digest)) throw errInvalidArgument(`image.Target.Digest: invalid digest ${JSON.stringify(t?.digest ?? '')}`);
  if (!t.mediaType) throw errInvalidArgument('image.Target.MediaType must be set');
  return t;
}

export class ImageStore {
  constructor(private readonly sql: Sql, private readonly publish: ImagePublisher) {}

  async get(ctx: CallContext, name: string): Promise<iapi.Image> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`SELECT * FROM images WHERE namespace = ${ns} AND name = ${name}`;
    if (rows.length === 0) throw errNotFound(`image "${name}"`);
    return rowToImage(rows[0]);
  }

  async list(ctx: CallContext): Promise<iapi.Image[]> {
    const ns = namespaceRequired(ctx);
    // TODO(filters): containerd's filter language arrives with the filters lib (issue 3).
    const rows = await this.sql`SELECT * FROM images WHERE namespace = ${ns} ORDER BY name`;
    return rows.map(rowToImage);
  }

  async create(ctx: CallContext, img: iapi.Image): Promise<iapi.Image> {
    const ns = namespaceRequired(ctx);
    const t = validateImage(img);
    let row;
    try {
      [row] = await this.sql`INSERT INTO images (namespace, name, labels, target_media_type, target_digest, target_size, target_annotations)
        VALUES (${ns}, ${img.name}, ${this.sql.json(img.labels ?? {})}, ${t.mediaType}, ${t.digest}, ${t.size}, ${this.sql.json(t.annotations ?? {})})
        RETURNING *`;
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`image "${img.name}"`);
      throw err;
    }
    const out = rowToImage(row);
    this.publish(ns, '/images/create', 'containerd.events.ImageCreate', evImage.ImageCreate, { name: out.name, labels: out.labels });
    return out;
  }

  async update(ctx: CallContext, img: iapi.Image, paths: string[]): Promise<iapi.Image> {
    const ns = namespaceRequired(ctx);
    return this.sql.begin(async (tx) => {
      const rows = await tx`SELECT * FROM images WHERE namespace = ${ns} AND name = ${img.name} FOR UPDATE`;
      if (rows.length === 0) throw errNotFound(`image "${img.name}"`);
      const cur = rowToImage(rows[0]);
      let next: iapi.Image;
      if (paths.length === 0) {
        next = { ...cur, labels: img.labels, target: img.target };
      } else {
        const l = applyMapPaths('labels', cur.labels, img.labels ?? {}, paths);
        next = { ...cur, labels: l.value };
        const rest: string[] = [];
        for (const p of l.rest) {
          if (p === 'target') next.target = img.target;
          else if (p.startsWith('annotations')) {
            const a = applyMapPaths('annotations', cur.target?.annotations ?? {}, img.target?.annotations ?? {}, [p]);
            next.target = { ...next.target!, annotations: a.value };
          } else rest.push(p);
        }
        refuseFields('image', img.name, rest);
      }
      const t = validateImage(next);
      const [row] = await tx`UPDATE images SET labels = ${tx.json(next.labels ?? {})}, target_media_type = ${t.mediaType},
        target_digest = ${t.digest}, target_size = ${t.size}, target_annotations = ${tx.json(t.annotations ?? {})}, updated_at = now()
        WHERE namespace = ${ns} AND name = ${img.name} RETURNING *`;
      const out = rowToImage(row);
      this.publish(ns, '/images/update', 'containerd.events.ImageUpdate', evImage.ImageUpdate, { name: out.name, labels: out.labels });
      return out;
    });
  }

  async delete(ctx: CallContext, name: string): Promise<void> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`DELETE FROM images WHERE namespace = ${ns} AND name = ${name} RETURNING name`;
    if (rows.length === 0) throw errNotFound(`image "${name}"`);
    this.publish(ns, '/images/delete', 'containerd.events.ImageDelete', evImage.ImageDelete, { name });
  }
}
