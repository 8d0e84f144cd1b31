// flotilla-images: containerd's Images API over PostgreSQL.
import { images as iapi } from '@flotilla/api';
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { endpointsFor, serviceSubject } from '@flotilla/bus';
import { connectDb, migrate } from '@flotilla/db';
import { errInvalidArgument } from '@flotilla/errdefs';
import { publishEvent } from '@flotilla/events';
import { ImageStore, imageMigrations } from '@flotilla/images';

void runApp('images', async ({ cfg, bus }) => {
  const sql = connectDb(cfg.databaseUrl, { appName: 'flotilla-images' });
  await migrate(sql, 'images', imageMigrations);
  const store = new ImageStore(sql, (ns, topic, typeUrl, type, ev) => publishEvent(bus, ns, topic, typeUrl, type as any, ev));

  await bus.addService({
    name: 'flotilla-images',
    version: FLOTILLA_VERSION,
    description: 'containerd image store (io.containerd.service.v1 images-service)',
    metadata: { plugin_type: 'io.containerd.service.v1', plugin_id: 'images-service' },
    endpoints: endpointsFor(iapi.ImagesDefinition, (m) => serviceSubject('images', m), {
      get: async (req, ctx) => ({ image: await store.get(ctx, req.name) }),
      list: async (_req, ctx) => ({ images: await store.list(ctx) }),
      create: async (req, ctx) => {
        if (!req.image) throw errInvalidArgument('image must be set');
        return { image: await store.create(ctx, req.image) };
      },
      update: async (req, ctx) => {
        if (!req.image) throw errInvalidArgument('image must be set');
        return { image: await store.update(ctx, req.image, req.updateMask ?? []) };
      },
      delete: async (req, ctx) => (await store.delete(ctx, req.name), {}),
    }),
  });
  return async () => {
    await sql.end({ timeout: 5 });
  };
});
