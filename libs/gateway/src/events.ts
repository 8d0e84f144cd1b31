// Events Subscribe, answered by the gateway from the bus itself: every process publishes its
// envelopes on flotilla.v1.events.<topic>, so the gateway subscribes there and sends each
// envelope the filters accept as it was published (the Envelope bytes are also Subscribe's
// reply message). Relaying through the events service cost two more hops per event (NATS to
// the service, its stream batch back through NATS), and tied every subscriber to one
// service instance; this way a stream outlives restarts of the events service.
import * as api from '@flotilla/api';
import { ALL_EVENTS, type Bus } from '@flotilla/bus';
import { GrpcCode, errInvalidArgument, errUnavailable, messageOf } from '@flotilla/errdefs';
import { envelopeFilter } from '@flotilla/events';
import { GrpcError, type StreamingCall } from '@flotilla/grpc';

/**
 * How many bytes of events may wait for a subscriber that does not read, beyond the call's
 * own queue, before its stream is ended with RESOURCE_EXHAUSTED (the client may subscribe
 * again). containerd queues without bound; the gateway serves every client of its node.
 */
export const MAX_EVENT_BACKLOG = 16 << 20;

/**
 * Streams the events `req`'s filters accept until the client cancels. A request that does
 * not decode, or bad filters, fail the call (InvalidArgument) before anything is
 * subscribed; a bus connection closed for good fails or ends it with Unavailable. A NATS
 * reconnect keeps the subscription (what was published while this gateway was cut off from
 * NATS is not seen).
 */
export function subscribe(bus: Bus, req: Uint8Array, call: StreamingCall, backlogLimit = MAX_EVENT_BACKLOG): Promise<void> {
  let filters: string[];
  try {
    filters = api.events.SubscribeRequest.decode(req).filters;
  } catch (err) {
    // As the services answer a request that does not decode (libs/bus rpc.ts).
    throw errInvalidArgument(`malformed Events.Subscribe request: ${messageOf(err)}`);
  }
  const accept = envelopeFilter(filters);
  if (bus.nc.isClosed()) throw errUnavailable('events: bus connection closed');
  return new Promise<void>((resolve, reject) => {
    let ended = false;
    // Bytes written since the call's queue went past its high-water mark.
    let backlog = 0;
    let waiting = false;
    const end = (err?: Error) => {
      if (ended) return;
      ended = true;
      sub.unsubscribe();
      if (err) reject(err);
      else resolve();
    };
    const sub = bus.nc.subscribe(ALL_EVENTS, {
      callback: (err, m) => {
        if (err || ended) return;
        let env: api.events.Envelope;
        try {
          env = api.events.Envelope.decode(m.data);
        } catch {
          return; // Not ours to fail on: a malformed publish from elsewhere.
        }
        if (!accept(env)) return;
        if (call.write(m.data)) return;
        backlog += m.data.length;
        if (backlog > backlogLimit) {
          end(new GrpcError(GrpcCode.ResourceExhausted, `events: subscriber ${backlog} bytes behind; subscribe again`));
          return;
        }
        if (waiting) return;
        waiting = true;
        void call.drained().then(() => {
          waiting = false;
          backlog = 0;
        });
      },
    });
    call.onCancel(() => end());
    void sub.closed.then(() => end(errUnavailable('events: bus connection closed')));
  });
}
