// containerd's Snapshots and Diff APIs for one node, over the overlayfs and native
// snapshotters. The request's snapshotter name picks the snapshotter, as in containerd.
import { randomBytes } from 'node:crypto';
import { content as capi, diff as dapi, evSnapshot, snapshots as sapi, type Mount } from '@flotilla/api';
import { isLayerMediaType } from '@flotilla/archive';
import type { CallContext, Client } from '@flotilla/bus';
import { ErrorClass, classOf, errInvalidArgument, errNotImplemented, messageOf, withClass } from '@flotilla/errdefs';
import { checkMap, parseFilters } from '@flotilla/filters';
import { namespaceRequired } from '@flotilla/identifiers';
import { layerSource } from './blob.js';
import { applyDiff, compareMounts } from './diff.js';
import { openIngest, type RequestBus } from './ingest.js';
import type { Info, Mount as SnapshotMount, SnapshotKind, Snapshotter } from './snapshotter.js';

export type SnapshotPublisher = (namespace: string, topic: string, typeUrl: `containerd.events.${string}`, type: { encode(m: any): { finish(): Uint8Array } }, event: unknown) => void;

/**
 * What the Snapshots service needs from the rest of the cluster, besides events: the
 * leases service (a snapshot created or committed under the caller's lease is held by it,
 * as containerd's metadata store does), and the collector, told after each removal.
 */
export interface SnapshotHooks {
  /** Adds snapshot `key` of `snapshotter` to `lease` (NotFound when the lease is unknown). */
  addLeaseResource?(ns: string, lease: string, snapshotter: string, key: string): Promise<void>;
  removeLeaseResource?(ns: string, lease: string, snapshotter: string, key: string): Promise<void>;
  /** A snapshot was removed: garbage may have been released (containerd marks the store dirty). */
  removed?(ns: string, snapshotter: string, key: string): void;
}

const KIND: Record<SnapshotKind, sapi.Kind> = { view: sapi.Kind.VIEW, active: sapi.Kind.ACTIVE, committed: sapi.Kind.COMMITTED };
const LIST_PAGE = 100;

function toApiInfo(i: Info): sapi.Info {
  return {
    name: i.name,
    parent: i.parent,
    kind: KIND[i.kind],
    labels: i.labels,
    createdAt: i.created,
    updatedAt: i.updated,
  };
}

/** containerd's adaptSnapshot: the fields a snapshots List filter can select on. */
function snapshotFields(i: Info) {
  return (p: readonly string[]): [string, boolean] => {
    switch (p[0]) {
      case 'kind':
        return [i.kind, true];
      case 'name':
        return [i.name, true];
      case 'parent':
        return [i.parent, true];
      case 'labels':
        return checkMap(p.slice(1), i.labels);
    }
    return ['', false];
  };
}

const toApiMounts = (ms: SnapshotMount[]): Mount[] => ms.map((m) => ({ type: m.type, source: m.source, target: m.target, options: m.options }));

export class SnapshotService {
  constructor(
    private readonly snapshotters: Map<string, Snapshotter>,
    private readonly publish: SnapshotPublisher,
    private readonly hooks: SnapshotHooks = {},
  ) {}

  /** containerd's getSnapshotter: the name is required, an unknown one InvalidArgument. */
  private pick(name: string): Snapshotter {
    if (!name) throw errInvalidArgument('snapshotter argument missing');
    const s = this.snapshotters.get(name);
    if (!s) throw errInvalidArgument(`snapshotter not loaded: ${name}`);
    return s;
  }

  /**
   * Runs `create` with snapshot `key` held by the caller's lease, if any. The resource is
   * recorded while `create` prepares, and `create` commits nothing before that has
   * succeeded (it awaits the promise it is given): a missing lease fails the call with its
   * own error and creates nothing, as when it was recorded first. A failed create releases
   * the resource again.
   */
  private async leased<T>(ctx: CallContext, ns: string, snapshotter: string, key: string, create: (leaseRecorded?: Promise<void>) => Promise<T>): Promise<T> {
    const lease = ctx.lease;
    if (!lease || !this.hooks.addLeaseResource) return create();
    const recorded = this.hooks.addLeaseResource(ns, lease, snapshotter, key);
    recorded.catch(() => {}); // create observes it
    try {
      return await create(recorded);
    } catch (err) {
      if (await recorded.then(() => true, () => false)) await this.hooks.removeLeaseResource?.(ns, lease, snapshotter, key).catch(() => {});
      throw err;
    }
  }

  async prepare(req: sapi.PrepareSnapshotRequest, ctx: CallContext): Promise<sapi.PrepareSnapshotResponse> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    const mounts = await this.leased(ctx, ns, sn.name, req.key, (recorded) => sn.prepare(ns, req.key, req.parent, req.labels, recorded));
    this.publish(ns, '/snapshot/prepare', 'containerd.events.SnapshotPrepare', evSnapshot.SnapshotPrepare, { key: req.key, parent: req.parent });
    return { mounts: toApiMounts(mounts) };
  }

  async view(req: sapi.ViewSnapshotRequest, ctx: CallContext): Promise<sapi.ViewSnapshotResponse> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    return { mounts: toApiMounts(await this.leased(ctx, ns, sn.name, req.key, (recorded) => sn.view(ns, req.key, req.parent, req.labels, recorded))) };
  }

  async mounts(req: sapi.MountsRequest, ctx: CallContext): Promise<sapi.MountsResponse> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    return { mounts: toApiMounts(await sn.mounts(ns, req.key)) };
  }

  async commit(req: sapi.CommitSnapshotRequest, ctx: CallContext): Promise<Record<string, never>> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    await this.leased(ctx, ns, sn.name, req.name, async (recorded) => {
      await recorded;
      return sn.commit(ns, req.name, req.key, req.labels);
    });
    if (ctx.lease) await this.hooks.removeLeaseResource?.(ns, ctx.lease, sn.name, req.key).catch(() => {});
    this.publish(ns, '/snapshot/commit', 'containerd.events.SnapshotCommit', evSnapshot.SnapshotCommit, { key: req.key, name: req.name });
    return {};
  }

  async remove(req: sapi.RemoveSnapshotRequest, ctx: CallContext): Promise<Record<string, never>> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    await sn.remove(ns, req.key);
    if (ctx.lease) await this.hooks.removeLeaseResource?.(ns, ctx.lease, sn.name, req.key).catch(() => {});
    this.hooks.removed?.(ns, sn.name, req.key);
    this.publish(ns, '/snapshot/remove', 'containerd.events.SnapshotRemove', evSnapshot.SnapshotRemove, { key: req.key });
    return {};
  }

  async stat(req: sapi.StatSnapshotRequest, ctx: CallContext): Promise<sapi.StatSnapshotResponse> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    return { info: toApiInfo(await sn.stat(ns, req.key)) };
  }

  async update(req: sapi.UpdateSnapshotRequest, ctx: CallContext): Promise<sapi.UpdateSnapshotResponse> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    if (!req.info?.name) throw errInvalidArgument();
    return { info: toApiInfo(await sn.update(ns, req.info, req.updateMask ?? [])) };
  }

  /**
   * Streamed in pages of 100 as containerd. containerd's List returns its errors without
   * gRPC translation (a bad filter, a missing namespace), which clients see as Unknown.
   */
  async *list(req: sapi.ListSnapshotsRequest, ctx: CallContext): AsyncGenerator<sapi.ListSnapshotsResponse> {
    const sn = this.pick(req.snapshotter);
    let ns: string;
    let filter: ReturnType<typeof parseFilters>;
    try {
      ns = namespaceRequired(ctx);
      filter = parseFilters(req.filters);
    } catch (err) {
      throw errUnknownAs(err);
    }
    let page: sapi.Info[] = [];
    for await (const info of sn.list(ns, (i) => filter.match(snapshotFields(i)))) {
      page.push(toApiInfo(info));
      if (page.length === LIST_PAGE) {
        yield { info: page };
        page = [];
      }
    }
    if (page.length > 0) yield { info: page };
  }

  async usage(req: sapi.UsageRequest, ctx: CallContext): Promise<sapi.UsageResponse> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    return sn.usage(ns, req.key);
  }

  /**
   * Removes data no record points at. (containerd 1.6's service answers NotImplemented here,
   * its metadata layer hiding the backends' Cleanup; flotilla does the work, as 1.7 does.)
   */
  async cleanup(req: sapi.CleanupRequest): Promise<Record<string, never>> {
    await this.pick(req.snapshotter).cleanup();
    return {};
  }
}

/** The same message, class Unknown (what a Go gRPC server makes of an untranslated error). */
function errUnknownAs(err: unknown): Error {
  return withClass(ErrorClass.Unknown, messageOf(err));
}

/** The label containerd's differ puts on a compressed layer: the digest of its tar. */
const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed';
const MEDIA_TAR = 'application/vnd.oci.image.layer.v1.tar';
const MEDIA_TAR_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';

/** containerd's uniqueRef: "<unix nanos>-<4 url-safe base64 chars>". */
function uniqueRef(): string {
  const ns = BigInt(Date.now()) * 1_000_000n + BigInt(Math.floor(Math.random() * 1_000_000));
  return `${ns}-${randomBytes(3).toString('base64url')}`;
}

/**
 * containerd's Diff service over this node's snapshotter mounts, with its walking differ:
 * Apply reads the layer from the content service and applies it with `applyDiff` (see
 * diff.ts for the rules); Diff writes the layer from `left` to `right` into the content
 * service (tar, or tar+gzip labelled with its uncompressed digest).
 */
export interface DiffServiceOptions {
  /** The content service: Apply reads layers from it, Diff checks and labels what it wrote. */
  content: Client<typeof capi.ContentDefinition>;
  /** The bus and the subject of the content service's Write, for Diff's upload. */
  ingest?: { bus: RequestBus; writeSubject: string };
  /** Apply refuses a layer decompressing past this many bytes (applyLayer's default otherwise). */
  maxUncompressedBytes?: number;
  /**
   * Where the content store keeps a blob on this host's disk, when it may share it (the
   * local backend): Apply then reads the file itself (see blob.ts for when it does).
   */
  localBlobPath?: (digest: string) => string;
}

export class DiffService {
  private readonly content: Client<typeof capi.ContentDefinition>;
  private readonly ingest?: { bus: RequestBus; writeSubject: string };
  private readonly maxUncompressedBytes?: number;
  private readonly localBlobPath?: (digest: string) => string;

  constructor(opts: DiffServiceOptions) {
    this.content = opts.content;
    this.localBlobPath = opts.localBlobPath;
    this.ingest = opts.ingest;
    this.maxUncompressedBytes = opts.maxUncompressedBytes;
  }

  async apply(req: dapi.ApplyRequest, ctx: CallContext): Promise<dapi.ApplyResponse> {
    namespaceRequired(ctx);
    const desc = req.diff;
    if (!desc) throw errInvalidArgument('diff descriptor must be set');
    if (!isLayerMediaType(desc.mediaType)) throw errNotImplemented(`failed to get stream processor for ${desc.mediaType}: no processor for media-type`);
    const blob = layerSource(this.content, desc.digest, ctx, { localBlobPath: this.localBlobPath });
    const res = await applyDiff(req.mounts as SnapshotMount[], blob, desc.mediaType, { maxUncompressedBytes: this.maxUncompressedBytes });
    return { applied: { mediaType: MEDIA_TAR, digest: res.diffID, size: res.size, annotations: {} } };
  }

  async diff(req: dapi.DiffRequest, ctx: CallContext): Promise<dapi.DiffResponse> {
    namespaceRequired(ctx);
    if (!this.ingest) throw errNotImplemented('diff: no content store to write to');
    const mediaType = req.mediaType || MEDIA_TAR_GZIP;
    if (mediaType !== MEDIA_TAR && mediaType !== MEDIA_TAR_GZIP) throw errNotImplemented(`unsupported diff media type: ${mediaType}`);
    const gzip = mediaType === MEDIA_TAR_GZIP;
    const newRef = !req.ref;
    const ref = req.ref || uniqueRef();

    const w = await openIngest(this.ingest.bus, this.ingest.writeSubject, ref, ctx).catch((err) => {
      throw wrap('failed to open writer', err);
    });
    let digest: string;
    let diffID: string;
    try {
      const res = await compareMounts(req.left as SnapshotMount[], req.right as SnapshotMount[], w.sink, { compression: gzip ? 'gzip' : 'none' }).catch((err) => {
        throw wrap(gzip ? 'failed to write compressed diff' : 'failed to write diff', err);
      });
      const labels: Record<string, string> = { ...req.labels };
      if (gzip) labels[LABEL_UNCOMPRESSED] = res.diffID;
      await w.commit(res.compressedSize, res.digest, labels).catch((err) => {
        throw wrap('failed to commit', err);
      });
      digest = res.digest;
      diffID = res.diffID;
    } catch (err) {
      await w.close();
      if (newRef) await this.content.abort({ ref }, ctx).catch(() => {});
      throw err;
    }

    const info = (await this.content.info({ digest }, ctx).catch((err) => {
      throw wrap('failed to get info from content store', err);
    })).info!;
    // A blob that already existed may lack the label: set it, as containerd does.
    if (gzip && !info.labels[LABEL_UNCOMPRESSED]) {
      await this.content.update({ info: { ...info, labels: { [LABEL_UNCOMPRESSED]: diffID } }, updateMask: [`labels.${LABEL_UNCOMPRESSED}`] }, ctx).catch((err) => {
        throw wrap('error setting uncompressed label', err);
      });
    }
    return { diff: { mediaType, digest: info.digest, size: info.size, annotations: {} } };
  }

}

/** containerd's fmt.Errorf("<what>: %w", err): the class is kept, the context prefixed. */
function wrap(what: string, err: unknown): Error {
  return withClass(classOf(err), `${what}: ${messageOf(err)}`);
}
