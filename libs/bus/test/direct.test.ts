// Direct links against a real nats-server: requests pinned to an instance (stream
// continuations, session subjects) and, after the first answer over NATS, requests to any
// subject that instance serves skip NATS when both ends offer a link; they fall back to NATS
// when the link cannot be reached or another instance answers on its socket, and fail as
// Unavailable when the instance goes away mid-request.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect, type NatsConnection } from 'nats';
import { BatchReader, Bus, currentContext, instanceSubject, serviceSubject } from '@flotilla/bus';
import { ErrorClass, classOf, errNotFound } from '@flotilla/errdefs';
import { startNats } from '@flotilla/testing';

let nats: Awaited<ReturnType<typeof startNats>>;
let dir: string;
let server: Bus;
let direct: Bus;
let plain: Bus;
let monitor: NatsConnection;
/** Pinned-subject messages that crossed nats-server, by subject kind. */
const seen = { inst: 0, stream: 0, svc: 0 };

async function serve(bus: Bus, name: string): Promise<void> {
  await bus.addService({
    name,
    version: '0.0.1',
    description: 'direct link test',
    endpoints: [
      {
        method: 'Open',
        subject: serviceSubject('content', `Open${name}`),
        unary: async () => Buffer.from(instanceSubject('content', bus.instance, 'Step')),
      },
      {
        method: 'Step',
        subject: instanceSubject('content', bus.instance, 'Step'),
        unary: async (d) => {
          const text = Buffer.from(d).toString();
          if (text === 'missing') throw errNotFound('blob "y"');
          if (text === 'slow') await new Promise((r) => setTimeout(r, 1000));
          return Buffer.from(JSON.stringify({ text, ns: currentContext().namespace }));
        },
      },
      {
        method: 'Echo',
        subject: serviceSubject('content', `Echo${name}`),
        unary: async (d) => Buffer.from(JSON.stringify({ text: Buffer.from(d).toString(), by: bus.instance, ns: currentContext().namespace })),
      },
      {
        // Messages of 1.2 MB, one per batch (a timer between them), each batch in the
        // memory of an earlier one once that was written (StreamCursor.reuse).
        method: 'Paced',
        subject: serviceSubject('content', `Paced${name}`),
        stream: async function* (d) {
          const n = Number(Buffer.from(d).toString());
          for (let i = 0; i < n; i++) {
            yield Buffer.alloc(1_200_000 + i, i + 1);
            await new Promise((r) => setTimeout(r, 2));
          }
        },
      },
      {
        method: 'Big',
        subject: serviceSubject('content', `Big${name}`),
        stream: async function* (d) {
          const n = Number(Buffer.from(d).toString());
          for (let i = 0; i < n; i++) yield Buffer.alloc(300 * 1024, i & 0xff);
        },
      },
    ],
  });
  await bus.nc.flush(); // the endpoints' subscriptions are registered before anyone calls
}

async function settled(): Promise<void> {
  await monitor.flush();
}

before(async () => {
  nats = await startNats();
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-direct-'));
  server = await Bus.connect({ url: nats.url, name: 'srv', directDir: dir });
  direct = await Bus.connect({ url: nats.url, name: 'cli', maxPayload: 64 * 1024, directDir: dir, requestTimeoutMs: 5000 });
  plain = await Bus.connect({ url: nats.url, name: 'plain', maxPayload: 64 * 1024 });
  await serve(server, 'A');
  monitor = await connect({ servers: nats.url });
  monitor.subscribe('flotilla.v1.inst.>', { callback: () => seen.inst++ });
  monitor.subscribe('flotilla.v1.stream.>', { callback: () => seen.stream++ });
  monitor.subscribe('flotilla.v1.svc.>', { callback: () => seen.svc++ });
  await monitor.flush();
});

after(async () => {
  await monitor?.close();
  await plain?.close();
  await direct?.close();
  await server?.close();
  await nats?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

async function readAll(bus: Bus, n: number): Promise<Uint8Array[]> {
  const got: Uint8Array[] = [];
  for await (const m of bus.requestStream(serviceSubject('content', 'BigA'), Buffer.from(String(n)))) got.push(m);
  return got;
}

test('a stream continues over the direct link, whole and in order', async () => {
  seen.stream = 0;
  const got = await readAll(direct, 40); // 12 MB: continuations whatever the batch size
  assert.equal(got.length, 40);
  got.forEach((m, i) => {
    assert.equal(m.length, 300 * 1024);
    assert.equal(m[0], i);
    assert.equal(m[m.length - 1], i);
  });
  await settled();
  assert.equal(seen.stream, 0, 'no continuation crossed nats-server');
});

test('batches written over the link from reused memory arrive intact', async () => {
  for (const bus of [direct, plain]) {
    const got: Uint8Array[] = [];
    for await (const m of bus.requestStream(serviceSubject('content', 'PacedA'), Buffer.from('12'))) got.push(m);
    assert.equal(got.length, 12);
    got.forEach((m, i) => {
      assert.equal(m.length, 1_200_000 + i);
      assert.ok(m.every((b) => b === i + 1), `message ${i} intact`);
    });
  }
});

test('a caller without direct links gets the same stream over NATS', async () => {
  seen.stream = 0;
  // 12 MB: more than one batch even at the server's 8 MiB max_payload.
  const got = await readAll(plain, 40);
  assert.equal(got.length, 40);
  assert.deepEqual(got.map((m) => m[0]), Array.from({ length: 40 }, (_, i) => i));
  await settled();
  assert.ok(seen.stream > 0, 'continuations went through nats-server');
});

test('session steps go direct, with context, pieces and error classes intact', async () => {
  const subject = Buffer.from(await direct.request(serviceSubject('content', 'OpenA'), new Uint8Array(0))).toString();
  seen.inst = 0;
  const r = JSON.parse(Buffer.from(await direct.request(subject, [Buffer.from('he'), Buffer.from('llo')], { namespace: 'ns9' })).toString());
  assert.deepEqual(r, { text: 'hello', ns: 'ns9' });
  await assert.rejects(direct.request(subject, Buffer.from('missing')), (e: Error) => {
    assert.equal(classOf(e), ErrorClass.NotFound);
    assert.equal(e.message, 'blob "y": not found');
    return true;
  });
  await settled();
  assert.equal(seen.inst, 0, 'no step crossed nats-server');
  // The same subject over NATS, pieces and all, for a caller without links.
  const viaNats = JSON.parse(Buffer.from(await plain.request(subject, [Buffer.from('a'), Buffer.from('b')])).toString());
  assert.equal(viaNats.text, 'ab');
  await settled();
  assert.equal(seen.inst, 1);
});

test('requestThen: written() once a direct link has sent the data, never over NATS', async () => {
  const subject = Buffer.from(await direct.request(serviceSubject('content', 'OpenA'), new Uint8Array(0))).toString();
  let written = 0;
  seen.inst = 0;
  const r = JSON.parse(Buffer.from(await direct.requestThen(subject, [Buffer.from('wr'), Buffer.from('itten')], () => written++, { namespace: 'ns3' })).toString());
  assert.deepEqual(r, { text: 'written', ns: 'ns3' });
  await settled();
  assert.equal(seen.inst, 0, 'the step went direct');
  assert.equal(written, 1);
  // A caller without links sends over NATS, which may hold the bytes: no written().
  const viaNats = JSON.parse(Buffer.from(await plain.requestThen(subject, Buffer.from('n'), () => written++)).toString());
  assert.equal(viaNats.text, 'n');
  await new Promise((res) => setTimeout(res, 50));
  assert.equal(written, 1);
});

test('an unreachable link falls back to NATS', async () => {
  const other = await Bus.connect({ url: nats.url, name: 'srvB', directDir: dir });
  try {
    await serve(other, 'B');
    const subject = Buffer.from(await direct.request(serviceSubject('content', 'OpenB'), new Uint8Array(0))).toString();
    // As if the server were on another host: its socket is not there for us.
    const addr = other.directAddress!;
    await fs.rm(addr.slice('unix:'.length));
    seen.inst = 0;
    const r = JSON.parse(Buffer.from(await direct.request(subject, Buffer.from('x'))).toString());
    assert.equal(r.text, 'x');
    await settled();
    assert.equal(seen.inst, 1, 'the step went through nats-server');
  } finally {
    await other.close();
  }
});

test('an instance that goes away mid-request is Unavailable', async () => {
  const other = await Bus.connect({ url: nats.url, name: 'srvC', directDir: dir });
  await serve(other, 'C');
  const subject = Buffer.from(await direct.request(serviceSubject('content', 'OpenC'), new Uint8Array(0))).toString();
  const outcome = direct.request(subject, Buffer.from('slow')).then(() => undefined, (e: Error) => e);
  await new Promise((r) => setTimeout(r, 200));
  await other.close();
  const err = await outcome;
  assert.ok(err, 'the request failed');
  assert.equal(classOf(err), ErrorClass.Unavailable);
});

async function echo(bus: Bus, name: string, text: string): Promise<{ text: string; by: string; ns?: string }> {
  return JSON.parse(Buffer.from(await bus.request(serviceSubject('content', `Echo${name}`), Buffer.from(text), { namespace: 'ns7' })).toString());
}

test('a service subject goes direct once an answer over NATS has named the instance', async () => {
  seen.svc = 0;
  for (let i = 0; i < 5; i++) assert.deepEqual(await echo(direct, 'A', `m${i}`), { text: `m${i}`, by: server.instance, ns: 'ns7' });
  await settled();
  assert.equal(seen.svc, 1, 'only the first request crossed nats-server');
  // A caller without links keeps using NATS for every request.
  for (let i = 0; i < 3; i++) await echo(plain, 'A', 'p');
  await settled();
  assert.equal(seen.svc, 4);
});

test('a socket answering as another instance is refused, and NATS used instead', async () => {
  const other = await Bus.connect({ url: nats.url, name: 'srvD', directDir: dir });
  const impostor = await Bus.connect({ url: nats.url, name: 'srvE', directDir: dir });
  try {
    await serve(other, 'D');
    await serve(impostor, 'D2');
    // other's socket path now leads to impostor (as a reused path on a shared directory would).
    await fs.rename(impostor.directAddress!.slice('unix:'.length), other.directAddress!.slice('unix:'.length));
    seen.svc = 0;
    for (let i = 0; i < 3; i++) assert.equal((await echo(direct, 'D', 'x')).by, other.instance);
    await settled();
    assert.equal(seen.svc, 3, 'every request went through nats-server');
  } finally {
    await impostor.close();
    await other.close();
  }
});

test('after an instance is replaced, requests reach the new one (over NATS, then its link)', async () => {
  const first = await Bus.connect({ url: nats.url, name: 'srvF', directDir: dir });
  await serve(first, 'F');
  assert.equal((await echo(direct, 'F', 'a')).by, first.instance);
  assert.equal((await echo(direct, 'F', 'b')).by, first.instance);
  await first.close();
  const second = await Bus.connect({ url: nats.url, name: 'srvF', directDir: dir });
  try {
    await serve(second, 'F');
    seen.svc = 0;
    for (let i = 0; i < 4; i++) assert.equal((await echo(direct, 'F', 'c')).by, second.instance);
    await settled();
    assert.equal(seen.svc, 1, 'one request over NATS learned the new link');
  } finally {
    await second.close();
  }
});

test('replies kept past later reads stay intact (each is a copy, not a view of a read)', async () => {
  const subject = serviceSubject('content', 'EchoA');
  await direct.request(subject, Buffer.from('warm')); // the link is learned
  const texts = Array.from({ length: 200 }, (_, i) => `reply ${i} `.repeat(1 + (i % 50)));
  const replies = await Promise.all(texts.map((t) => direct.request(subject, Buffer.from(t))));
  replies.forEach((r, i) => assert.equal(JSON.parse(Buffer.from(r).toString()).text, texts[i], `reply ${i}`));
});

test('stream batches given back take later batches over the link, and every one arrives intact', async () => {
  // 48 MB in batches of up to 8 MB; 300 KiB messages, so batches end inside a message
  // (such a batch is kept until the next one has completed that message).
  const client = await Bus.connect({ url: nats.url, name: 'recycler', directDir: dir, requestTimeoutMs: 5000 });
  try {
    const subject = serviceSubject('content', 'BigA');
    await client.request(serviceSubject('content', 'EchoA'), Buffer.from('warm')); // the link is learned
    const given = new Set<ArrayBufferLike>();
    let reused = 0;
    let messages = 0;
    const reader = new BatchReader();
    const giveBack = (batch: Uint8Array) => {
      // As a socket that has written it: its bytes are garbage from now on.
      batch.fill(0xee);
      given.add(batch.buffer);
      client.recycleBatch(batch);
      client.recycleBatch(batch); // twice is harmless
    };
    let held: Uint8Array | undefined;
    for await (const batch of client.requestBatches(subject, Buffer.from('160'))) {
      if (given.has(batch.buffer)) reused++;
      for (const m of reader.read(batch)) {
        assert.equal(m.length, 300 * 1024);
        assert.ok(m.every((b) => b === (messages & 0xff)), `message ${messages} intact`);
        messages++;
      }
      // A message's parts are in at most two batches here: the one before is done with.
      if (held) giveBack(held);
      held = undefined;
      if (reader.incomplete) held = batch;
      else giveBack(batch);
    }
    assert.equal(messages, 160);
    assert.ok(reused >= 3, `only ${reused} batches arrived in memory given back`);
    // Batches that came over NATS are not pooled: giving them back changes nothing.
    for await (const batch of plain.requestBatches(subject, Buffer.from('3'))) plain.recycleBatch(batch);
  } finally {
    await client.close();
  }
});
