// containerd's event filters: an envelope exposes `namespace`, `topic` and `event.<field>`
// (the event's own string fields and label maps, by their proto names, as containerd's
// generated Field methods do), so `topic~="/tasks/"`, `namespace==x` and
// `event.container_id==c1` work as with containerd.
import { events as ev, evContainer, evContent, evImage, evNamespace, evSnapshot, evTask, type MessageType } from '@flotilla/api';
import { checkMap, parseFilters, type Filter } from '@flotilla/filters';

type AnyMessage = MessageType<Record<string, unknown>>;

const EVENT_TYPES = new Map<string, AnyMessage>();
for (const mod of [evContainer, evContent, evImage, evNamespace, evSnapshot, evTask] as unknown as Record<string, unknown>[]) {
  for (const [name, type] of Object.entries(mod)) {
    if (name.includes('_') || typeof type !== 'object' || type === null || !('decode' in type)) continue;
    EVENT_TYPES.set(`containerd.events.${name}`, type as AnyMessage);
  }
}

const camel = (s: string) => s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

function eventField(env: ev.Envelope, path: readonly string[]): [string, boolean] {
  if (!env.event || path.length === 0) return ['', false];
  const url = env.event.typeUrl.replace(/^.*\//, '');
  const type = EVENT_TYPES.get(url);
  if (!type) return ['', false];
  let msg: Record<string, unknown>;
  try {
    msg = type.decode(env.event.value);
  } catch {
    return ['', false];
  }
  const v = msg[camel(path[0]!)];
  if (typeof v === 'string') return path.length === 1 ? [v, true] : ['', false];
  if (v && typeof v === 'object' && path.length > 1) return checkMap(path.slice(1), v as Record<string, string>);
  return ['', false];
}

/** A matcher for Subscribe's filters (no filters: every envelope). */
export function envelopeFilter(filters: readonly string[]): (env: ev.Envelope) => boolean {
  const f: Filter = parseFilters(filters);
  return (env) =>
    f.match((path) => {
      switch (path[0]) {
        case 'namespace': return [env.namespace, true];
        case 'topic': return [env.topic, true];
        case 'event': return eventField(env, path.slice(1));
        default: return ['', false];
      }
    });
}
