// flotilla-events: containerd's Events API (Publish, Forward) over NATS subjects; each gateway
// answers Subscribe itself.
import { events as ev } from '@flotilla/api';
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { endpointsFor, serviceSubject } from '@flotilla/bus';
import { EventsService } from '@flotilla/events';

void runApp('events', async ({ bus }) => {
  const svc = new EventsService(bus);
  await bus.addService({
    name: 'flotilla-events',
    version: FLOTILLA_VERSION,
    description: 'containerd events (io.containerd.grpc.v1 events)',
    metadata: { plugin_type: 'io.containerd.grpc.v1', plugin_id: 'events' },
    endpoints: endpointsFor(ev.EventsDefinition, (m) => serviceSubject('events', m), {
      publish: (req, ctx) => svc.publish(req, ctx),
      forward: (req) => svc.forward(req),
    }),
  });
  return async () => {};
});
