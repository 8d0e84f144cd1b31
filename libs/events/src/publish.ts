// Publishing containerd events on the bus. Every process publishes its own events; the
// envelope is containerd's (timestamp, namespace, topic, event as Any) and travels on the
// topic's subject, so subscribers filter by subject and decode one type.
import { events as ev, toTimestamp, type MessageType } from '@flotilla/api';
import { type Bus, eventSubject } from '@flotilla/bus';

/** containerd's type URL for an event: the proto full name, e.g. containerd.events.TaskExit. */
export type EventTypeUrl = `containerd.events.${string}`;

export function publishEvent<T>(bus: Bus, namespace: string, topic: string, typeUrl: EventTypeUrl, type: MessageType<T>, event: T): void {
  publishEnvelope(bus, {
    timestamp: toTimestamp(),
    namespace,
    topic,
    event: { typeUrl, value: Buffer.from(type.encode(event).finish()) },
  });
}

export function publishEnvelope(bus: Bus, env: ev.Envelope): void {
  bus.publish(eventSubject(env.topic), ev.Envelope.encode(env).finish(), { namespace: env.namespace });
}
