// containerd's Events API over NATS: Publish and Forward put envelopes on the topic's
// subject. Subscribe is answered by each gateway from those subjects (libs/gateway/src/events.ts).
import { events as ev, toTimestamp } from '@flotilla/api';
import type { Bus, CallContext } from '@flotilla/bus';
import { errInvalidArgument } from '@flotilla/errdefs';
import { namespaceRequired } from '@flotilla/identifiers';
import { publishEnvelope } from './publish.js';

const TOPIC_RE = /^(\/[A-Za-z0-9_-]+)+$/;

function validateTopic(topic: string): void {
  // containerd's events/exchange validateTopic: must start with '/', no empty components.
  if (!topic) throw errInvalidArgument('must not be empty');
  if (!TOPIC_RE.test(topic)) throw errInvalidArgument(`topic ${JSON.stringify(topic)} must be a path of simple components`);
}

export class EventsService {
  constructor(private readonly bus: Bus) {}

  async publish(req: ev.PublishRequest, ctx: CallContext): Promise<Record<string, never>> {
    const namespace = namespaceRequired(ctx);
    validateTopic(req.topic);
    if (!req.event) throw errInvalidArgument('event must be set');
    publishEnvelope(this.bus, { timestamp: toTimestamp(), namespace, topic: req.topic, event: req.event });
    return {};
  }

  async forward(req: ev.ForwardRequest): Promise<Record<string, never>> {
    const env = req.envelope;
    if (!env) throw errInvalidArgument('envelope must be set');
    namespaceRequired({ namespace: env.namespace });
    validateTopic(env.topic);
    publishEnvelope(this.bus, env);
    return {};
  }
}
