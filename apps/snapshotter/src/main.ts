// flotilla-snapshotter: this node's snapshotters (overlayfs, native) and diff service.
import path from 'node:path';
import { content as capi, diff as dapi, leases as lapi, snapshots as sapi } from '@flotilla/api';
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { endpointsFor, nodeSubject, rpcClient, serviceSubject } from '@flotilla/bus';
import { appStateDir } from '@flotilla/config';
import { DiskBackend } from '@flotilla/content';
import { connectDb, migrate } from '@flotilla/db';
import { publishEvent } from '@flotilla/events';
import { DiffService, SNAPSHOTTERS, SnapshotService, Snapshotter, snapshotMigrations } from '@flotilla/snapshots';

void runApp('snapshotter', async ({ cfg, bus }) => {
  const sql = connectDb(cfg.databaseUrl, { appName: 'flotilla-snapshotter' });
  await migrate(sql, 'snapshots', snapshotMigrations);
  const snapshotters = new Map<string, Snapshotter>();
  for (const name of SNAPSHOTTERS) {
    const s = new Snapshotter({ sql, nodeId: cfg.nodeId, name, root: path.join(appStateDir(cfg, 'snapshotter'), name) });
    await s.init();
    snapshotters.set(name, s);
  }
  const leases = rpcClient(bus, lapi.LeasesDefinition, (m) => serviceSubject('leases', m));
  const lease = (ns: string, id: string, snapshotter: string, key: string) => ({ req: { id, resource: { id: key, type: `snapshots/${snapshotter}` } }, ctx: { namespace: ns } });
  const snaps = new SnapshotService(snapshotters, (ns, topic, typeUrl, type, ev) => publishEvent(bus, ns, topic, typeUrl, type as any, ev), {
    addLeaseResource: async (ns, id, snapshotter, key) => {
      const { req, ctx } = lease(ns, id, snapshotter, key);
      await leases.addResource(req, ctx);
    },
    removeLeaseResource: async (ns, id, snapshotter, key) => {
      const { req, ctx } = lease(ns, id, snapshotter, key);
      await leases.deleteResource(req, ctx);
    },
  });
  const content = rpcClient(bus, capi.ContentDefinition, (m) => serviceSubject('content', m));
  // With the local backend on this host, Apply reads layer blobs from content's own files
  // (the content app's state dir under the same FLOTILLA_HOME); when they are not there,
  // or not the blob, it reads over the bus.
  const blobs = cfg.content.backend === 'local' ? new DiskBackend(appStateDir(cfg, 'content')) : undefined;
  const diff = new DiffService({
    content,
    ingest: { bus, writeSubject: serviceSubject('content', 'Write') },
    maxUncompressedBytes: cfg.maxLayerBytes,
    localBlobPath: blobs && ((d) => blobs.blobPath(d)),
  });

  await bus.addService({
    name: 'flotilla-snapshotter',
    version: FLOTILLA_VERSION,
    description: `snapshotters and diff of node ${cfg.nodeId}`,
    metadata: {
      node: cfg.nodeId,
      plugins: [...SNAPSHOTTERS.map((n) => `io.containerd.snapshotter.v1 ${n}`), 'io.containerd.differ.v1 walking', 'io.containerd.service.v1 snapshots-service', 'io.containerd.service.v1 diff-service'].join(','),
    },
    endpoints: [
      ...endpointsFor(sapi.SnapshotsDefinition, (m) => nodeSubject(cfg.nodeId, 'snapshots', m), {
        prepare: (r, c) => snaps.prepare(r, c),
        view: (r, c) => snaps.view(r, c),
        mounts: (r, c) => snaps.mounts(r, c),
        commit: (r, c) => snaps.commit(r, c),
        remove: (r, c) => snaps.remove(r, c),
        stat: (r, c) => snaps.stat(r, c),
        update: (r, c) => snaps.update(r, c),
        list: (r, c) => snaps.list(r, c),
        usage: (r, c) => snaps.usage(r, c),
        cleanup: (r) => snaps.cleanup(r),
      }),
      ...endpointsFor(dapi.DiffDefinition, (m) => nodeSubject(cfg.nodeId, 'diff', m), {
        apply: (r, c) => diff.apply(r, c),
        diff: (r, c) => diff.diff(r, c),
      }),
    ],
  });
  return async () => {
    await sql.end({ timeout: 5 });
  };
});
