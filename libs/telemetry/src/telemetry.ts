// Tracing set-up. Spans are exported over OTLP/HTTP only when OTEL_EXPORTER_OTLP_ENDPOINT
// (or ..._TRACES_ENDPOINT) is set; otherwise the OpenTelemetry API stays a no-op and the
// only work left per call is a header lookup. W3C trace context is always propagated,
// so a trace started by an instrumented client continues through flotilla.
import { context, propagation, trace, type Span, SpanKind, SpanStatusCode, type TextMapGetter, type TextMapSetter, type Context } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';

let shutdownFn: (() => Promise<void>) | undefined;

/** Installs the propagator always, and an exporting tracer provider when configured. */
export async function initTelemetry(serviceName: string, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (!endpoint || env.OTEL_SDK_DISABLED === 'true') return;
  // Loaded lazily so processes without an exporter never pay for the SDK.
  const [{ BasicTracerProvider, BatchSpanProcessor }, { OTLPTraceExporter }, { resourceFromAttributes }] = await Promise.all([
    import('@opentelemetry/sdk-trace-base'),
    import('@opentelemetry/exporter-trace-otlp-http'),
    import('@opentelemetry/resources'),
  ]);
  const cm = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(cm);
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME || serviceName }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  trace.setGlobalTracerProvider(provider);
  shutdownFn = () => provider.shutdown();
}

export async function shutdownTelemetry(): Promise<void> {
  try {
    await shutdownFn?.();
  } catch {
    // Telemetry never fails a shutdown.
  }
}

const tracer = () => trace.getTracer('flotilla');

/** Runs fn inside a span that is a child of `parent`; records errors; never throws its own. */
export async function withSpan<T>(name: string, kind: SpanKind, parent: Context, attrs: Record<string, string>, fn: (span: Span) => Promise<T>): Promise<T> {
  const span = tracer().startSpan(name, { kind, attributes: attrs }, parent);
  try {
    return await context.with(trace.setSpan(parent, span), () => fn(span));
  } catch (err) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
    throw err;
  } finally {
    span.end();
  }
}

/** A span that outlives one function call (a bidirectional stream); end() it exactly once. */
export interface OpenSpan {
  /** The context to run the stream's work in, so calls it makes continue the trace. */
  context: Context;
  end(err?: unknown): void;
}

export function openSpan(name: string, kind: SpanKind, parent: Context, attrs: Record<string, string>): OpenSpan {
  const span = tracer().startSpan(name, { kind, attributes: attrs }, parent);
  let ended = false;
  return {
    context: trace.setSpan(parent, span),
    end(err) {
      if (ended) return;
      ended = true;
      if (err !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
      span.end();
    },
  };
}

/** Carrier accessors for anything with get/set of string values (NATS headers, gRPC metadata). */
export interface Carrier {
  get(key: string): string | undefined;
  set(key: string, value: string): void;
}
const setter: TextMapSetter<Carrier> = { set: (c, k, v) => c.set(k, v) };
const getter: TextMapGetter<Carrier> = { get: (c, k) => c.get(k), keys: () => [] };

export function injectTrace(carrier: Carrier, ctx: Context = context.active()): void {
  propagation.inject(ctx, carrier, setter);
}
export function extractTrace(carrier: Carrier, ctx: Context = context.active()): Context {
  return propagation.extract(ctx, carrier, getter);
}

export { SpanKind, context as otelContext };
