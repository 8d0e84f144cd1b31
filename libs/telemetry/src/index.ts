// @flotilla/telemetry: OpenTelemetry set-up and W3C trace-context propagation helpers.
export { initTelemetry, shutdownTelemetry, withSpan, openSpan, injectTrace, extractTrace, SpanKind, otelContext } from './telemetry.js';
export type { Carrier } from './telemetry.js';
export type { OpenSpan } from './telemetry.js';
