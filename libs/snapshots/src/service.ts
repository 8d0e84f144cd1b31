// containerd's Snapshots and Diff APIs for one node, over the overlayfs and native
// snapshotters. The request's snapshotter name picks the snapshotter, as in containerd.
import { Readable } from 'node:stream';
import { content as capi, diff as dapi, evSnapshot, snapshots as sapi, type Mount } from '@flotilla/api';
import { isLayerMediaType } from '@flotilla/archive';
import type { CallContext, Client } from '@flotilla/bus';
import { ErrorClass, errInvalidArgument, errNotImplemented, messageOf, withClass } from '@flotilla/errdefs';
import { checkMap, parseFilters } from '@flotilla/filters';
import { namespaceRequired } from '@flotilla/identifiers';
import { applyDiff } from './diff.js';
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
   * Runs `create` with snapshot `key` held by the caller's lease, if any: the lease is
   * checked (and the resource recorded) first, so a missing lease creates nothing; a
   * failed create releases it again.
   */
  private async leased<T>(ctx: CallContext, ns: string, snapshotter: string, key: string, create: () => Promise<T>): Promise<T> {
    const lease = ctx.lease;
    if (!lease || !this.hooks.addLeaseResource) return create();
    await this.hooks.addLeaseResource(ns, lease, snapshotter, key);
    try {
      return await create();
    } catch (err) {
      await this.hooks.removeLeaseResource?.(ns, lease, snapshotter, key).catch(() => {});
      throw err;
    }
  }

  async prepare(req: sapi.PrepareSnapshotRequest, ctx: CallContext): Promise<sapi.PrepareSnapshotResponse> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    const mounts = await this.leased(ctx, ns, sn.name, req.key, () => sn.prepare(ns, req.key, req.parent, req.labels));
    this.publish(ns, '/snapshot/prepare', 'containerd.events.SnapshotPrepare', evSnapshot.SnapshotPrepare, { key: req.key, parent: req.parent });
    return { mounts: toApiMounts(mounts) };
  }

  async view(req: sapi.ViewSnapshotRequest, ctx: CallContext): Promise<sapi.ViewSnapshotResponse> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    return { mounts: toApiMounts(await this.leased(ctx, ns, sn.name, req.key, () => sn.view(ns, req.key, req.parent, req.labels))) };
  }

  async mounts(req: sapi.MountsRequest, ctx: CallContext): Promise<sapi.MountsResponse> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    return { mounts: toApiMounts(await sn.mounts(ns, req.key)) };
  }

  async commit(req: sapi.CommitSnapshotRequest, ctx: CallContext): Promise<Record<string, never>> {
    const sn = this.pick(req.snapshotter);
    const ns = namespaceRequired(ctx);
    await this.leased(ctx, ns, sn.name, req.name, () => sn.commit(ns, req.name, req.key, req.labels));
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

/**
 * containerd's Diff service over this node's snapshotter mounts: Apply reads the layer from
 * the content service and applies it with `applyDiff` (see diff.ts for the rules).
 */
export class DiffService {
  constructor(private readonly content: Client<typeof capi.ContentDefinition>) {}

  async apply(req: dapi.ApplyRequest, ctx: CallContext): Promise<dapi.ApplyResponse> {
    namespaceRequired(ctx);
    const desc = req.diff;
    if (!desc) throw errInvalidArgument('diff descriptor must be set');
    if (!isLayerMediaType(desc.mediaType)) throw errNotImplemented(`failed to get stream processor for ${desc.mediaType}: no processor for media-type`);
    const content = this.content;
    const blob = Readable.from((async function* () {
      for await (const r of content.read({ digest: desc.digest, offset: 0, size: 0 }, ctx)) yield r.data;
    })());
    const res = await applyDiff(req.mounts as SnapshotMount[], blob, desc.mediaType);
    return { applied: { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: res.diffID, size: res.size, annotations: {} } };
  }

  async diff(): Promise<dapi.DiffResponse> {
    throw errNotImplemented('diff (layer creation) arrives with issue 4');
  }
}

