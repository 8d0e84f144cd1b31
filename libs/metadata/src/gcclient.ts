// The collector's internal bus endpoint, `flotilla.v1.svc.gc.Collect` (served by the
// metadata service). Request and reply are JSON: { wait, released } -> GcStats | {}.
// With `wait` the reply comes after a collection that started after the request, as
// containerd's ScheduleAndWait; without, it only records a deletion for the scheduler.
import { type Bus, serviceSubject, type CallContext } from '@flotilla/bus';
import type { GcStats } from './gc.js';
import type { ReleasedResource } from './leases.js';

export interface GcCollectRequest {
  wait: boolean;
  released: ReleasedResource[];
}

export const gcCollectSubject = () => serviceSubject('gc', 'Collect');

export async function requestCollection(bus: Bus, req: GcCollectRequest, ctx?: CallContext): Promise<GcStats | undefined> {
  const reply = await bus.request(gcCollectSubject(), new TextEncoder().encode(JSON.stringify(req)), ctx);
  const text = new TextDecoder().decode(reply);
  return text && text !== '{}' ? (JSON.parse(text) as GcStats) : undefined;
}

export function decodeCollectRequest(data: Uint8Array): GcCollectRequest {
  const v = data.length ? JSON.parse(new TextDecoder().decode(data)) : {};
  return { wait: !!v.wait, released: Array.isArray(v.released) ? v.released : [] };
}
