// containerd's Snapshots and Diff APIs for one node, over the overlayfs and native
// snapshotters. The request's snapshotter name picks the snapshotter, as in containerd.
import { Readable } from 'node:stream';
import { content as capi, diff as dapi, evSnapshot, snapshots as sapi, toTimestamp, type Mount } from '@flotilla/api';
import { isLayerMediaType } from '@flotilla/archive';
import type { CallContext, Client } from '@flotilla/bus';
import { errInvalidArgument, errNotFound, errNotImplemented } from '@flotilla/errdefs';
import { namespaceRequired } from '@flotilla/identifiers';
import { applyDiff } from './diff.js';
import type { Info, Mount as SnapshotMount, SnapshotKind, Snapshotter } from './snapshotter.js';

export type SnapshotPublisher = (namespace: string, topic: string, typeUrl: `containerd.events.${string}`, type: { encode(m: any): { finish(): Uint8Array } }, event: unknown) => void;

const KIND: Record<SnapshotKind, sapi.Kind> = { view: sapi.Kind.VIEW, active: sapi.Kind.ACTIVE, committed: sapi.Kind.COMMITTED };
const LIST_PAGE = 100;

function toApiInfo(i: Info): sapi.Info {
  return {
    name: i.name,
    parent: i.parent,
    kind: KIND[i.kind],
    labels: i.labels,
    createdAt: toTimestamp(i.createdAt),
    updatedAt: toTimestamp(i.updatedAt),
  };
}

const toApiMounts = (ms: SnapshotMount[]): Mount[] => ms.map((m) => ({ type: m.type, source: m.source, target: m.target, options: m.options }));

export class SnapshotService {
  constructor(
    private readonly snapshotters: Map<string, Snapshotter>,
    private readonly publish: SnapshotPublisher,
  ) {}

  private pick(name: string): Snapshotter {
    const s = this.snapshotters.get(name || 'overlayfs');
    if (!s) throw errNotFound(`snapshotter not loaded: ${name}`);
    return s;
  }

  async prepare(req: sapi.PrepareSnapshotRequest, ctx: CallContext): Promise<sapi.PrepareSnapshotResponse> {
    const ns = namespaceRequired(ctx);
    const mounts = await this.pick(req.snapshotter).prepare(ns, req.key, req.parent, req.labels);
    this.publish(ns, '/snapshot/prepare', 'containerd.events.SnapshotPrepare', evSnapshot.SnapshotPrepare, { key: req.key, parent: req.parent });
    return { mounts: toApiMounts(mounts) };
  }

  async view(req: sapi.ViewSnapshotRequest, ctx: CallContext): Promise<sapi.ViewSnapshotResponse> {
    const ns = namespaceRequired(ctx);
    return { mounts: toApiMounts(await this.pick(req.snapshotter).view(ns, req.key, req.parent, req.labels)) };
  }

  async mounts(req: sapi.MountsRequest, ctx: CallContext): Promise<sapi.MountsResponse> {
    const ns = namespaceRequired(ctx);
    return { mounts: toApiMounts(await this.pick(req.snapshotter).mounts(ns, req.key)) };
  }

  async commit(req: sapi.CommitSnapshotRequest, ctx: CallContext): Promise<Record<string, never>> {
    const ns = namespaceRequired(ctx);
    await this.pick(req.snapshotter).commit(ns, req.name, req.key, req.labels);
    this.publish(ns, '/snapshot/commit', 'containerd.events.SnapshotCommit', evSnapshot.SnapshotCommit, { key: req.key, name: req.name });
    return {};
  }

  async remove(req: sapi.RemoveSnapshotRequest, ctx: CallContext): Promise<Record<string, never>> {
    const ns = namespaceRequired(ctx);
    await this.pick(req.snapshotter).remove(ns, req.key);
    this.publish(ns, '/snapshot/remove', 'containerd.events.SnapshotRemove', evSnapshot.SnapshotRemove, { key: req.key });
    return {};
  }

  async stat(req: sapi.StatSnapshotRequest, ctx: CallContext): Promise<sapi.StatSnapshotResponse> {
    const ns = namespaceRequired(ctx);
    return { info: toApiInfo(await this.pick(req.snapshotter).stat(ns, req.key)) };
  }

  async update(req: sapi.UpdateSnapshotRequest, ctx: CallContext): Promise<sapi.UpdateSnapshotResponse> {
    const ns = namespaceRequired(ctx);
    if (!req.info) throw errInvalidArgument('info must be set');
    return { info: toApiInfo(await this.pick(req.snapshotter).update(ns, req.info, req.updateMask ?? [])) };
  }

  async *list(req: sapi.ListSnapshotsRequest, ctx: CallContext): AsyncGenerator<sapi.ListSnapshotsResponse> {
    const ns = namespaceRequired(ctx);
    // TODO(filters): containerd's filter language arrives with @flotilla/filters (issue 3/4).
    let page: sapi.Info[] = [];
    for await (const info of this.pick(req.snapshotter).list(ns)) {
      page.push(toApiInfo(info));
      if (page.length === LIST_PAGE) {
        yield { info: page };
        page = [];
      }
    }
    if (page.length > 0) yield { info: page };
  }

  async usage(req: sapi.UsageRequest, ctx: CallContext): Promise<sapi.UsageResponse> {
    const ns = namespaceRequired(ctx);
    return this.pick(req.snapshotter).usage(ns, req.key);
  }

  async cleanup(req: sapi.CleanupRequest): Promise<Record<string, never>> {
    await this.pick(req.snapshotter).cleanup();
    return {};
  }
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

