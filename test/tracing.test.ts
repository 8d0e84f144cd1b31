// One trace per call across every hop: with OTEL_EXPORTER_OTLP_ENDPOINT set, the gateway's
// server span and the spans of every service the call reaches share one trace id and chain
// by parent span id. The collector here is a plain HTTP endpoint receiving OTLP/HTTP JSON,
// standing in for Jaeger's OTLP receiver.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { buildBusyboxImage, startStack, testNamespace, type Stack, type TestImage } from '@flotilla/testing';

interface Span {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
}

const spans: Span[] = [];
let collector: http.Server;
let stack: Stack;
let image: TestImage;

interface OtlpAttr { key: string; value: { stringValue?: string } }
interface OtlpExport {
  resourceSpans?: { resource?: { attributes?: OtlpAttr[] }; scopeSpans?: { spans?: { traceId: string; spanId: string; parentSpanId?: string; name: string }[] }[] }[];
}

before(async () => {
  collector = http.createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      if (req.url === '/v1/traces') {
        const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as OtlpExport;
        for (const rs of body.resourceSpans ?? []) {
          const service = rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value.stringValue ?? '';
          for (const ss of rs.scopeSpans ?? []) for (const s of ss.spans ?? []) spans.push({ service, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId ?? '', name: s.name });
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => collector.listen(0, '127.0.0.1', r));
  const port = (collector.address() as AddressInfo).port;
  image = await buildBusyboxImage();
  stack = await startStack({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`, OTEL_BSP_SCHEDULE_DELAY: '100' } });
});

after(async () => {
  await stack?.stop();
  collector?.close();
});

/** Waits until a span matching `pred` has arrived (the exporter batches). */
async function waitSpan(pred: (s: Span) => boolean): Promise<Span> {
  const until = Date.now() + 20_000;
  for (;;) {
    const s = spans.find(pred);
    if (s) return s;
    assert.ok(Date.now() < until, `span not exported; have: ${spans.map((x) => `${x.service}:${x.name}`).join(', ')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('a task call is one trace: gateway -> tasks service -> node agent', async (t) => {
  const ns = testNamespace(t.name);
  const imp = await stack.ctr(['images', 'import', image.archivePath], { namespace: ns });
  assert.equal(imp.code, 0, imp.stderr);
  const run = await stack.ctr(['run', '--rm', image.name, 'traced', '/bin/true'], { namespace: ns });
  assert.equal(run.code, 0, run.stderr);

  const gw = await waitSpan((s) => s.name === '/containerd.services.tasks.v1.Tasks/Create');
  assert.match(gw.service, /gateway/);
  const svc = await waitSpan((s) => s.traceId === gw.traceId && s.parentSpanId === gw.spanId);
  assert.match(svc.service, /tasks/, `child of the gateway span: ${svc.service}:${svc.name}`);
  const agent = await waitSpan((s) => s.traceId === gw.traceId && s.parentSpanId === svc.spanId && /node-agent/.test(s.service));
  assert.match(agent.name, /Create/);
});
test('a content write is one trace across gateway and content service', async (t) => {
  const ns = testNamespace(t.name);
  const r = await stack.ctr(['content', 'ingest', 'traced-ref'], { namespace: ns, input: 'traced bytes\n' });
  assert.equal(r.code, 0, r.stderr);
  const gw = await waitSpan((s) => s.name === '/containerd.services.content.v1.Content/Write');
  await waitSpan((s) => s.traceId === gw.traceId && /content/.test(s.service) && s.parentSpanId === gw.spanId);
});
