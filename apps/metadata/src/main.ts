// flotilla-metadata: containerd's namespaces, containers and leases APIs over PostgreSQL,
// and the garbage collector with its scheduler.
import { containers as capi, content as ctapi, leases as lapi, namespaces as napi, snapshots as sapi } from '@flotilla/api';
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { ALL_EVENTS, endpointsFor, nodeSubject, rpcClient, serviceSubject, topicOfSubject } from '@flotilla/bus';
import { connectDb, migrate } from '@flotilla/db';
import { errInvalidArgument, isNotFound, messageOf } from '@flotilla/errdefs';
import { publishEvent } from '@flotilla/events';
import {
  GarbageCollector, GcScheduler, LeaseStore, MetadataStore, decodeCollectRequest, gcCollectSubject, metadataMigrations,
} from '@flotilla/metadata';

// Topics whose events are metadata mutations for the GC scheduler; deletions are "dirty".
const MUTATING = /^\/(images|containers|content|snapshot|namespaces)\//;
const DELETING = /^\/(images\/delete|containers\/delete|content\/delete|snapshot\/remove|namespaces\/delete)$/;

void runApp('metadata', async ({ cfg, bus, log }) => {
  const sql = connectDb(cfg.databaseUrl, { appName: 'flotilla-metadata' });
  await migrate(sql, 'metadata', metadataMigrations);
  const store = new MetadataStore(sql, (ns, topic, typeUrl, type, ev) => publishEvent(bus, ns, topic, typeUrl, type as any, ev));
  // Containers stored before their messages were: encoded once, before serving.
  const encoded = await store.containerEncodeMissing();
  if (encoded) log(`stored the messages of ${encoded} containers`);
  const empty = {};

  // Removal is the owners' job: content through the content service, snapshots through
  // the snapshotter of the node that holds them. Already gone counts as removed.
  const content = rpcClient(bus, ctapi.ContentDefinition, (m) => serviceSubject('content', m));
  const gcLog = (msg: string, err?: unknown) => log(msg, err === undefined ? undefined : { error: messageOf(err) });
  const collector = new GarbageCollector(sql, {
    removeContent: async (namespace, digest) => {
      await content.delete({ digest }, { namespace }).catch((err) => { if (!isNotFound(err)) throw err; });
    },
    removeSnapshot: async (node, namespace, snapshotter, key) => {
      const snaps = rpcClient(bus, sapi.SnapshotsDefinition, (m) => nodeSubject(node, 'snapshots', m));
      await snaps.remove({ snapshotter, key }, { namespace, node }).catch((err) => { if (!isNotFound(err)) throw err; });
    },
  }, { log: gcLog });
  const scheduler = new GcScheduler((released) => collector.collect(released), { log: gcLog });
  scheduler.start();

  const leases = new LeaseStore(sql, {
    onDeleted: async (released, sync) => {
      if (sync) await scheduler.scheduleAndWait(released);
      else scheduler.mutation(true, released);
    },
  });

  const events = bus.subscribe(ALL_EVENTS, (_data, _ctx, subject) => {
    const topic = topicOfSubject(subject);
    if (MUTATING.test(topic)) scheduler.mutation(DELETING.test(topic));
  });

  await bus.addService({
    name: 'flotilla-metadata',
    version: FLOTILLA_VERSION,
    description: 'containerd metadata: namespaces, containers, leases (io.containerd.metadata.v1) and garbage collection',
    metadata: { plugin_type: 'io.containerd.metadata.v1', plugin_id: 'bolt' },
    endpoints: [
      ...endpointsFor(napi.NamespacesDefinition, (m) => serviceSubject('namespaces', m), {
        get: async (req) => ({ namespace: await store.namespaceGet(req.name) }),
        list: async () => ({ namespaces: await store.namespaceList() }),
        create: async (req) => ({ namespace: await store.namespaceCreate(req.namespace ?? { name: '', labels: {} }) }),
        update: async (req) => ({ namespace: await store.namespaceUpdate(req.namespace ?? { name: '', labels: {} }, req.updateMask ?? []) }),
        delete: async (req) => (await store.namespaceDelete(req.name), empty),
      }),
      ...endpointsFor(capi.ContainersDefinition, (m) => serviceSubject('containers', m), {
        // Answers are the stored messages (each a Container as field 1): a Get, Create or
        // Update response is one; a ListContainersResponse all of them concatenated, a
        // ListContainerMessage one of them.
        get: (req, ctx) => store.containerGetEncoded(ctx, req.id),
        list: async (req, ctx) => {
          const out: Buffer[] = [];
          for await (const page of store.containerListEncoded(ctx, req.filters)) out.push(...page);
          return Buffer.concat(out);
        },
        listStream: async function* (req, ctx) {
          // A page at a time: the bus batches it without a step per message.
          yield* store.containerListEncoded(ctx, req.filters);
        },
        create: async (req, ctx) => {
          if (!req.container) throw errInvalidArgument('container must be set');
          return (await store.containerCreate(ctx, req.container)).encoded;
        },
        update: async (req, ctx) => {
          if (!req.container) throw errInvalidArgument('container must be set');
          return (await store.containerUpdate(ctx, req.container, req.updateMask ?? [])).encoded;
        },
        delete: async (req, ctx) => (await store.containerDelete(ctx, req.id), empty),
      }),
      ...endpointsFor(lapi.LeasesDefinition, (m) => serviceSubject('leases', m), {
        create: async (req, ctx) => ({ lease: await leases.create(ctx, req.id, req.labels) }),
        delete: async (req, ctx) => (await leases.delete(ctx, req.id, req.sync), empty),
        list: async (req, ctx) => ({ leases: await leases.list(ctx, req.filters) }),
        addResource: async (req, ctx) => (await leases.addResource(ctx, req.id, req.resource ?? { id: '', type: '' }), empty),
        deleteResource: async (req, ctx) => (await leases.deleteResource(ctx, req.id, req.resource ?? { id: '', type: '' }), empty),
        listResources: async (req, ctx) => ({ resources: await leases.listResources(ctx, req.id) }),
      }),
      {
        // Internal: a deletion elsewhere (images) reports what it released; `wait` collects now.
        method: 'Collect',
        subject: gcCollectSubject(),
        unary: async (data) => {
          const req = decodeCollectRequest(data);
          if (!req.wait) {
            scheduler.mutation(true, req.released);
            return new TextEncoder().encode('{}');
          }
          return new TextEncoder().encode(JSON.stringify(await scheduler.scheduleAndWait(req.released)));
        },
      },
    ],
  });
  return async () => {
    events.unsubscribe();
    await scheduler.stop();
    await sql.end({ timeout: 5 });
  };
});
