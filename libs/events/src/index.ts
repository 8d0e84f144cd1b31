// @flotilla/events: containerd events on the bus (publishing helpers and the events service).
export { publishEvent, publishEnvelope } from './publish.js';
export type { EventTypeUrl } from './publish.js';
export { EventsService } from './service.js';
export { envelopeFilter } from './filter.js';
