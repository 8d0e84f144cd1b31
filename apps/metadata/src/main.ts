// flotilla-metadata: containerd's namespaces, containers and leases APIs over PostgreSQL.
import { containers as capi, leases as lapi, namespaces as napi } from '@flotilla/api';
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { endpointsFor, serviceSubject } from '@flotilla/bus';
import { connectDb, migrate } from '@flotilla/db';
import { errInvalidArgument } from '@flotilla/errdefs';
import { publishEvent } from '@flotilla/events';
import { MetadataStore, metadataMigrations } from '@flotilla/metadata';

void runApp('metadata', async ({ cfg, bus }) => {
  const sql = connectDb(cfg.databaseUrl, { appName: 'flotilla-metadata' });
  await migrate(sql, 'metadata', metadataMigrations);
  const store = new MetadataStore(sql, (ns, topic, typeUrl, type, ev) => publishEvent(bus, ns, topic, typeUrl, type as any, ev));
  const empty = {};

  await bus.addService({
    name: 'flotilla-metadata',
    version: FLOTILLA_VERSION,
    description: 'containerd metadata: namespaces, containers, leases (io.containerd.metadata.v1)',
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
        get: async (req, ctx) => ({ container: await store.containerGet(ctx, req.id) }),
        list: async (_req, ctx) => {
          const out: capi.Container[] = [];
          for await (const page of store.containerList(ctx)) out.push(...page);
          return { containers: out };
        },
        listStream: async function* (_req, ctx) {
          for await (const page of store.containerList(ctx)) for (const c of page) yield { container: c };
        },
        create: async (req, ctx) => {
          if (!req.container) throw errInvalidArgument('container must be set');
          return { container: await store.containerCreate(ctx, req.container) };
        },
        update: async (req, ctx) => {
          if (!req.container) throw errInvalidArgument('container must be set');
          return { container: await store.containerUpdate(ctx, req.container, req.updateMask ?? []) };
        },
        delete: async (req, ctx) => (await store.containerDelete(ctx, req.id), empty),
      }),
      ...endpointsFor(lapi.LeasesDefinition, (m) => serviceSubject('leases', m), {
        create: async (req, ctx) => ({ lease: await store.leaseCreate(ctx, req.id, req.labels) }),
        delete: async (req, ctx) => (await store.leaseDelete(ctx, req.id), empty),
        list: async (_req, ctx) => ({ leases: await store.leaseList(ctx) }),
        addResource: async (req, ctx) => (await store.leaseAddResource(ctx, req.id, req.resource ?? { id: '', type: '' }), empty),
        deleteResource: async (req, ctx) => (await store.leaseDeleteResource(ctx, req.id, req.resource ?? { id: '', type: '' }), empty),
        listResources: async (req, ctx) => ({ resources: await store.leaseListResources(ctx, req.id) }),
      }),
    ],
  });
  return async () => {
    await sql.end({ timeout: 5 });
  };
});
