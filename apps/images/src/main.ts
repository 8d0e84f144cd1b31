// flotilla-images: containerd's Images API over PostgreSQL.
import { images as iapi } from '@flotilla/api';
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { endpointsFor, serviceSubject } from '@flotilla/bus';
import { connectDb, migrate } from '@flotilla/db';
import { errInvalidArgument, messageOf } from '@flotilla/errdefs';
import { publishEvent } from '@flotilla/events';
import { ImageStore, imageMigrations } from '@flotilla/images';
import { requestCollection } from '@flotilla/metadata';

void runApp('images', async ({ cfg, bus, log }) => {
  const sql = connectDb(cfg.databaseUrl, { appName: 'flotilla-images' });
  await migrate(sql, 'images', imageMigrations);
  const store = new ImageStore(sql, (ns, topic, typeUrl, type, ev) => publishEvent(bus, ns, topic, typeUrl, type as any, ev), {
    // The collector lives in the metadata service; a synchronous delete waits for a collection there.
    onDeleted: async (released, sync) => {
      if (sync) await requestCollection(bus, { wait: true, released });
      else void requestCollection(bus, { wait: false, released }).catch((err) => log('gc notify failed', { error: messageOf(err) }));
    },
  });

  await bus.addService({
    name: 'flotilla-images',
    version: FLOTILLA_VERSION,
    description: 'containerd image store (io.containerd.service.v1 images-service)',
    metadata: { plugin_type: 'io.containerd.service.v1', plugin_id: 'images-service' },
    endpoints: endpointsFor(iapi.ImagesDefinition, (m) => serviceSubject('images', m), {
      get: async (req, ctx) => ({ image: await store.get(ctx, req.name) }),
      list: async (req, ctx) => ({ images: await store.list(ctx, req.filters) }),
      create: async (req, ctx) => {
        if (!req.image) throw errInvalidArgument('Image.Name required');
        return { image: await store.create(ctx, req.image) };
      },
      update: async (req, ctx) => {
        if (!req.image) throw errInvalidArgument('Image.Name required');
        return { image: await store.update(ctx, req.image, req.updateMask ?? []) };
      },
      delete: async (req, ctx) => (await store.delete(ctx, req.name, req.sync), {}),
    }),
  });
  return async () => {
    await sql.end({ timeout: 5 });
  };
});
