// The bus against a real nats-server: unary calls, error classes, held calls, streams.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Bus, CONTINUE, currentContext, serviceSubject } from '@flotilla/bus';
import { ErrorClass, classOf, errNotFound } from '@flotilla/errdefs';
import { startNats } from '@flotilla/testing';

let nats: Awaited<ReturnType<typeof startNats>>;
let server: Bus;
let client: Bus;
let holds = 0;

before(async () => {
  nats = await startNats();
  server = await Bus.connect({ url: nats.url, name: 'test-server' });
  client = await Bus.connect({ url: nats.url, name: 'test-client', maxPayload: 64 * 1024, requestTimeoutMs: 2000 });
  await server.addService({
    name: 'flotilla-test',
    version: '0.0.1',
    description: 'bus test',
    endpoints: [
      { method: 'Echo', subject: serviceSubject('content', 'Echo'), unary: async (d) => d },
      {
        method: 'Ctx',
        subject: serviceSubject('content', 'Ctx'),
        unary: async () => Buffer.from(JSON.stringify(currentContext())),
      },
      { method: 'Missing', subject: serviceSubject('content', 'Missing'), unary: async () => { throw errNotFound('blob "x"'); } },
      {
        method: 'Hold',
        subject: serviceSubject('content', 'Hold'),
        unary: async () => (++holds < 3 ? CONTINUE : Buffer.from('done')),
      },
      {
        method: 'Big',
        subject: serviceSubject('content', 'Big'),
        stream: async function* (d) {
          const n = Number(Buffer.from(d).toString());
          for (let i = 0; i < n; i++) yield Buffer.alloc(300 * 1024, i & 0xff);
        },
      },
    ],
  });
});

after(async () => {
  await client?.close();
  await server?.close();
  await nats?.stop();
});

test('unary round trip carries the call context', async () => {
  assert.equal(Buffer.from(await client.request(serviceSubject('content', 'Echo'), Buffer.from('hi'))).toString(), 'hi');
  const got = JSON.parse(Buffer.from(await client.request(serviceSubject('content', 'Ctx'), new Uint8Array(0), { namespace: 'ns1', lease: 'l1', node: 'n1' })).toString());
  assert.deepEqual(got, { namespace: 'ns1', lease: 'l1', node: 'n1' });
});

test('errors keep their class and message', async () => {
  await assert.rejects(client.request(serviceSubject('content', 'Missing'), new Uint8Array(0)), (e: Error) => {
    assert.equal(classOf(e), ErrorClass.NotFound);
    assert.equal(e.message, 'blob "x": not found');
    return true;
  });
});

test('nobody answering is Unavailable', async () => {
  await assert.rejects(client.request(serviceSubject('images', 'Get'), new Uint8Array(0)), (e: Error) => classOf(e) === ErrorClass.Unavailable);
});

test('held calls are re-sent until answered', async () => {
  holds = 0;
  assert.equal(Buffer.from(await client.request(serviceSubject('content', 'Hold'), new Uint8Array(0))).toString(), 'done');
  assert.equal(holds, 3);
});

test('streams larger than the payload cap arrive whole and in order', async () => {
  const got: Uint8Array[] = [];
  for await (const m of client.requestStream(serviceSubject('content', 'Big'), Buffer.from('7'))) got.push(m);
  assert.equal(got.length, 7);
  got.forEach((m, i) => {
    assert.equal(m.length, 300 * 1024);
    assert.equal(m[0], i);
    assert.equal(m[m.length - 1], i);
  });
});

test('a stream abandoned early is cancelled on the server', async () => {
  for await (const m of client.requestStream(serviceSubject('content', 'Big'), Buffer.from('50'))) {
    assert.equal(m[0], 0);
    break;
  }
  // Nothing to assert beyond not hanging: the next call still works.
  assert.equal(Buffer.from(await client.request(serviceSubject('content', 'Echo'), Buffer.from('ok'))).toString(), 'ok');
});

test('services are discoverable over the micro protocol', async () => {
  const infos = [];
  for await (const i of await client.nc.services.client().info('flotilla-test')) infos.push(i);
  assert.equal(infos.length, 1);
  assert.equal(infos[0]!.version, '0.0.1');
  assert.ok(infos[0]!.endpoints.some((e) => e.subject === serviceSubject('content', 'Echo')));
});
