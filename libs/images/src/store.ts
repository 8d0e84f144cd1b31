// The images service's PostgreSQL store, with containerd's validation, error texts and
// events (metadata/images.go, services/images/local.go).
import { images as iapi, evImage, toTimestamp, type Descriptor } from '@flotilla/api';
import { type Sql, sqlState, UNIQUE_VIOLATION } from '@flotilla/db';
import { errAlreadyExists, errInvalidArgument, errNotFound } from '@flotilla/errdefs';
import { checkMap, parseFilters } from '@flotilla/filters';
import { namespaceRequired, validateLabels } from '@flotilla/identifiers';
import type { CallContext } from '@flotilla/bus';
import { withGcReadLock, type ReleasedResource } from '@flotilla/metadata';

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

export interface ImageHooks {
  /** An image was deleted: `released` is its target; `sync` waits for a collection (DeleteImageRequest.sync). */
  onDeleted?: (released: ReleasedResource[], sync: boolean) => Promise<void>;
}

// go-digest: algorithm ":" encoded; sha256/sha384/sha512 are the available algorithms.
const DIGEST_ANCHORED = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const ALGORITHMS: Record<string, number> = { sha256: 64, sha384: 96, sha512: 128 };

/** go-digest's Digest.Validate, with its error texts; undefined when valid. */
export function digestError(d: string): string | undefined {
  const i = d.indexOf(':');
  if (i <= 0 || i + 1 === d.length) return 'invalid checksum digest format';
  const alg = d.slice(0, i);
  const enc = d.slice(i + 1);
  const size = ALGORITHMS[alg];
  if (size === undefined) return DIGEST_ANCHORED.test(d) ? 'unsupported digest algorithm' : 'invalid checksum digest format';
  if (enc.length !== size) return 'invalid checksum digest length';
  if (!/^[a-f0-9]+$/.test(enc)) return 'invalid checksum digest format';
  return undefined;
}

/** Empty label and annotation values are not stored (containerd's writeMap drops them). */
const dropEmpty = (m: Record<string, string> | undefined) => Object.fromEntries(Object.entries(m ?? {}).filter(([, v]) => v !== ''));

function rowToImage(r: any): iapi.Image {
  return {
    name: r.name,
    labels: r.labels ?? {},
    target: { mediaType: r.target_media_type, digest: r.target_digest, size: Number(r.target_size), annotations: r.target_annotations ?? {} },
    createdAt: toTimestamp(r.created_at),
    updatedAt: toTimestamp(r.updated_at),
  };
}

/** containerd's validateImage and validateTarget. */
function validateImage(img: iapi.Image): Descriptor {
  if (!img.name) throw errInvalidArgument('image name must not be empty');
  try {
    validateLabels(img.labels);
  } catch (err) {
    throw errInvalidArgument(`image.Labels: ${(err as Error).message.replace(/: invalid argument$/, '')}`, { cause: err });
  }
  const t = img.target ?? { mediaType: '', digest: '', size: 0, annotations: {} };
  const bad = digestError(t.digest);
  if (bad) throw errInvalidArgument(`Target.Digest ${JSON.stringify(t.digest)} invalid: ${bad}`);
  if (!(t.size > 0)) throw errInvalidArgument('Target.Size must be greater than zero');
  if (!t.mediaType) throw errInvalidArgument('Target.MediaType must be set');
  return t;
}

/** containerd's adaptImage: name, target.digest, target.mediatype, labels.<k>, annotations.<k>. */
function adapt(img: iapi.Image) {
  return (p: readonly string[]): [string, boolean] => {
    switch (p[0]) {
      case 'name': return [img.name, img.name.length > 0];
      case 'target':
        if (p[1] === 'digest') return [img.target?.digest ?? '', !!img.target?.digest];
        if (p[1] === 'mediatype') return [img.target?.mediaType ?? '', !!img.target?.mediaType];
        return ['', false];
      case 'labels': return checkMap(p.slice(1), Object.keys(img.labels).length ? img.labels : undefined);
      case 'annotations': return checkMap(p.slice(1), Object.keys(img.target?.annotations ?? {}).length ? img.target!.annotations : undefined);
    }
    return ['', false];
  };
}

export class ImageStore {
  constructor(private readonly sql: Sql, private readonly publish: ImagePublisher, private readonly hooks: ImageHooks = {}) {}

  async get(ctx: CallContext, name: string): Promise<iapi.Image> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`SELECT * FROM images WHERE namespace = ${ns} AND name = ${name}`;
    if (rows.length === 0) throw errNotFound(`image ${JSON.stringify(name)}`);
    return rowToImage(rows[0]);
  }

  async list(ctx: CallContext, filters: string[] = []): Promise<iapi.Image[]> {
    const ns = namespaceRequired(ctx);
    const filter = parseFilters(filters, { wrapAgain: true });
    const rows = await this.sql`SELECT * FROM images WHERE namespace = ${ns} ORDER BY name`;
    return rows.map(rowToImage).filter((img) => filter.match(adapt(img)));
  }

  async create(ctx: CallContext, img: iapi.Image): Promise<iapi.Image> {
    const ns = namespaceRequired(ctx);
    if (!img.name) throw errInvalidArgument('Image.Name required');
    const t = validateImage(img);
    let row;
    try {
      // Shared collection lock: the new image may be the only reference to its target.
      [row] = await withGcReadLock(this.sql, async (tx) => {
        await tx`INSERT INTO metadata_namespaces (name) VALUES (${ns}) ON CONFLICT DO NOTHING`;
        return tx`INSERT INTO images (namespace, name, labels, target_media_type, target_digest, target_size, target_annotations)
          VALUES (${ns}, ${img.name}, ${tx.json(dropEmpty(img.labels))}, ${t.mediaType}, ${t.digest}, ${t.size}, ${tx.json(dropEmpty(t.annotations))})
          RETURNING *`;
      });
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw errAlreadyExists(`image ${JSON.stringify(img.name)}`);
      throw err;
    }
    const out = rowToImage(row);
    this.publish(ns, '/images/create', 'containerd.events.ImageCreate', evImage.ImageCreate, { name: out.name, labels: out.labels });
    return out;
  }

  async update(ctx: CallContext, img: iapi.Image, paths: string[]): Promise<iapi.Image> {
    const ns = namespaceRequired(ctx);
    if (!img.name) throw errInvalidArgument('Image.Name required');
    const out = await withGcReadLock(this.sql, async (tx) => {
      const rows = await tx`SELECT * FROM images WHERE namespace = ${ns} AND name = ${img.name} FOR UPDATE`;
      if (rows.length === 0) throw errNotFound(`image ${JSON.stringify(img.name)}`);
      const cur = rowToImage(rows[0]);
      let next: iapi.Image;
      if (paths.length === 0) {
        next = { ...cur, labels: img.labels ?? {}, target: img.target };
      } else {
        next = { ...cur, labels: { ...cur.labels }, target: { ...cur.target!, annotations: { ...cur.target!.annotations } } };
        const inT = img.target ?? { mediaType: '', digest: '', size: 0, annotations: {} };
        for (const p of paths) {
          if (p.startsWith('labels.')) {
            const k = p.slice('labels.'.length);
            next.labels[k] = img.labels?.[k] ?? '';
          } else if (p.startsWith('annotations.')) {
            const k = p.slice('annotations.'.length);
            next.target!.annotations[k] = inT.annotations?.[k] ?? '';
          } else if (p === 'labels') next.labels = { ...(img.labels ?? {}) };
          else if (p === 'target') next.target = inT;
          else if (p === 'annotations') next.target = { ...next.target!, annotations: { ...(inT.annotations ?? {}) } };
          else throw errInvalidArgument(`cannot update ${JSON.stringify(p)} field on image ${JSON.stringify(img.name)}`);
        }
      }
      const t = validateImage(next);
      const [row] = await tx`UPDATE images SET labels = ${tx.json(dropEmpty(next.labels))}, target_media_type = ${t.mediaType},
        target_digest = ${t.digest}, target_size = ${t.size}, target_annotations = ${tx.json(dropEmpty(t.annotations))}, updated_at = now()
        WHERE namespace = ${ns} AND name = ${img.name} RETURNING *`;
      return rowToImage(row);
    });
    this.publish(ns, '/images/update', 'containerd.events.ImageUpdate', evImage.ImageUpdate, { name: out.name, labels: out.labels });
    return out;
  }

  async delete(ctx: CallContext, name: string, sync = false): Promise<void> {
    const ns = namespaceRequired(ctx);
    const rows = await this.sql`DELETE FROM images WHERE namespace = ${ns} AND name = ${name} RETURNING target_digest`;
    if (rows.length === 0) throw errNotFound(`image ${JSON.stringify(name)}`);
    this.publish(ns, '/images/delete', 'containerd.events.ImageDelete', evImage.ImageDelete, { name });
    await this.hooks.onDeleted?.([{ namespace: ns, type: 'content', id: rows[0]!.target_digest }], sync);
  }
}
