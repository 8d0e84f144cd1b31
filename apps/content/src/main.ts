// flotilla-content: containerd's Content API over the local-disk or the S3 backend
// (FLOTILLA_CONTENT_BACKEND).
import path from 'node:path';
import { content as api, evContent, flotillaContent as fc, leases as lapi } from '@flotilla/api';
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { endpointsFor, instanceSubject, rpcClient, serviceSubject, type CallContext } from '@flotilla/bus';
import { appStateDir } from '@flotilla/config';
import { ContentService, ContentStore, DiskBackend, S3Backend, contentMigrations, type Backend } from '@flotilla/content';
import { connectDb, migrate } from '@flotilla/db';
import { publishEvent } from '@flotilla/events';
import { errInvalidArgument, messageOf } from '@flotilla/errdefs';

void runApp('content', async ({ cfg, bus }) => {
  const sql = connectDb(cfg.databaseUrl, { appName: 'flotilla-content' });
  await migrate(sql, 'content', contentMigrations);
  const c = cfg.content;
  const backend: Backend = c.backend === 's3' ? new S3Backend(c) : new DiskBackend(path.join(appStateDir(cfg, 'content')));
  await backend.init();
  // Lease membership lives with the leases service (metadata_lease_resources).
  const leases = rpcClient(bus, lapi.LeasesDefinition, (m) => serviceSubject('leases', m));
  const store = new ContentStore({
    sql,
    backend,
    leases: {
      add: async (ns, lease, resource) => void (await leases.addResource({ id: lease, resource }, { namespace: ns })),
      remove: async (ns, lease, resource) => void (await leases.deleteResource({ id: lease, resource }, { namespace: ns })),
    },
    onDelete: (ns, digest) => publishEvent(bus, ns, '/content/delete', 'containerd.events.ContentDelete', evContent.ContentDelete, { digest }),
  });
  // Read replies carry at most this much data each, so one reply fits one bus batch.
  const readChunk = Math.min(1024 * 1024, bus.chunkLimit - 1024);
  const svc = new ContentService(store, readChunk);

  const nextSubject = instanceSubject('content', bus.instance, 'WriteNext');
  const encode = (r: fc.WriteStepReply) => fc.WriteStepReply.encode(r).finish();
  const writeStep = (next: boolean) => async (data: Uint8Array, ctx: CallContext) => {
    const step = fc.WriteStep.decode(data);
    if (step.close) {
      await svc.writeEnd(step.session);
      return encode({ session: step.session, sessionSubject: '', response: undefined, done: true });
    }
    const req = step.request ?? api.WriteContentRequest.fromPartial({});
    if (!next) {
      const r = await svc.writeOpen(req, ctx);
      return encode({ session: r.session, sessionSubject: nextSubject, response: r.reply, done: r.done });
    }
    const vouched = step.digest ? { digest: step.digest, offset: step.digestOffset } : undefined;
    const r = await svc.writeNext(step.session, req, ctx, step.acceptedAt || undefined, vouched);
    return encode({ session: step.session, sessionSubject: nextSubject, response: r.reply, done: r.done });
  };

  await bus.addService({
    name: 'flotilla-content',
    version: FLOTILLA_VERSION,
    description: 'containerd content store (io.containerd.content.v1)',
    metadata: { plugin_type: 'io.containerd.content.v1', plugin_id: 'content', backend: backend.kind },
    endpoints: [
      ...endpointsFor(api.ContentDefinition, (m) => serviceSubject('content', m), {
        info: (req, ctx) => svc.info(req, ctx),
        update: (req, ctx) => svc.update(req, ctx),
        list: (req, ctx) => svc.list(req, ctx),
        delete: (req, ctx) => svc.delete(req, ctx),
        read: (req, ctx) => svc.read(req, ctx),
        status: (req, ctx) => svc.status(req, ctx),
        listStatuses: (req, ctx) => svc.listStatuses(req, ctx),
        abort: (req, ctx) => svc.abort(req, ctx),
      }),
      {
        method: 'InfoData',
        subject: serviceSubject('content', 'InfoData'),
        unary: async (data: Uint8Array, ctx: CallContext) => {
          // A request that does not decode fails as the plain Info endpoint's does (libs/bus rpc.ts).
          let q: fc.InfoDataRequest;
          let req: api.InfoRequest;
          try {
            q = fc.InfoDataRequest.decode(data);
            req = api.InfoRequest.decode(q.request);
          } catch (err) {
            throw errInvalidArgument(`malformed Content.Info request: ${messageOf(err)}`);
          }
          const r = await svc.infoData(req, q.maxData, ctx);
          const response = api.InfoResponse.encode(r.response).finish();
          return fc.InfoDataReply.encode({ response: Buffer.from(response.buffer, response.byteOffset, response.byteLength), digest: r.response.info!.digest, hasData: !!r.data, data: r.data ?? Buffer.alloc(0) }).finish();
        },
      },
      { method: 'Write', subject: serviceSubject('content', 'Write'), unary: writeStep(false) },
      { method: 'WriteNext', subject: nextSubject, unary: writeStep(true) },
    ],
  });

  return async () => {
    await svc.close();
    await sql.end({ timeout: 5 });
  };
});
