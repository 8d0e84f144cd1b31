// Events Subscribe as the gateway answers it from the bus: envelopes published anywhere
// reach the subscriber byte for byte, filtered as containerd filters them; bad filters are
// InvalidArgument; a subscriber that stops reading is cut off (RESOURCE_EXHAUSTED) past the
// backlog bound instead of growing the gateway without end; the stream outlives a NATS
// restart. Real nats-server and a grpc-js client.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { events as ev, evTask, toTimestamp } from '@flotilla/api';
import { publishEnvelope } from '@flotilla/events';
import { MAX_EVENT_BACKLOG } from '@flotilla/gateway';
import { startLoneGateway, type LoneGateway } from '@flotilla/testing';

const SUBSCRIBE = '/containerd.services.events.v1.Events/Subscribe';
let gw: LoneGateway;

before(async () => {
  gw = await startLoneGateway('gw-events');
});

after(async () => {
  await gw?.stop();
});

function subscribe(filters: string[]): grpc.ClientReadableStream<Buffer> {
  return gw.client.makeServerStreamRequest(SUBSCRIBE, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(ev.SubscribeRequest.encode({ filters }).finish()));
}

/** A /tasks/exit envelope for `id`; with `padding`, an event of that many bytes instead (an Any of a test type). */
function exitEnvelope(namespace: string, id: string, padding = 0): ev.Envelope {
  const event = padding
    ? { typeUrl: 'flotilla.test.Padding', value: Buffer.alloc(padding, 7) }
    : { typeUrl: 'containerd.events.TaskExit', value: Buffer.from(evTask.TaskExit.encode({ containerId: id, id, pid: 1, exitStatus: 0, exitedAt: toTimestamp() }).finish()) };
  return { timestamp: toTimestamp(), namespace, topic: '/tasks/exit', event };
}

const idOf = (b: Buffer) => evTask.TaskExit.decode(ev.Envelope.decode(b).event!.value).containerId;

/**
 * Publishes `id`'s exit every 50 ms until the stream delivers it (the subscription is in
 * place from then on); earlier messages are passed over.
 */
async function delivered(stream: grpc.ClientReadableStream<Buffer>, namespace: string, id: string): Promise<Buffer> {
  let onData!: (b: Buffer) => void;
  const got = new Promise<Buffer>((resolve, reject) => {
    onData = (b) => idOf(b) === id && resolve(b);
    stream.on('data', onData);
    stream.once('error', reject);
  });
  const timer = setInterval(() => publishEnvelope(gw.bus, exitEnvelope(namespace, id)), 50);
  try {
    return await got;
  } finally {
    clearInterval(timer);
    stream.off('data', onData);
  }
}

test('published envelopes reach a subscriber byte for byte, through its filters', async () => {
  const stream = subscribe(['namespace==ns1,topic=="/tasks/exit"']);
  const seen: ev.Envelope[] = [];
  const first = await delivered(stream, 'ns1', 'warm');
  // The bytes as published: containerd's Envelope encoding of the same fields.
  assert.deepEqual(first, Buffer.from(ev.Envelope.encode(ev.Envelope.decode(first)).finish()));
  stream.on('data', (b: Buffer) => seen.push(ev.Envelope.decode(b)));
  publishEnvelope(gw.bus, exitEnvelope('other', 'skipped'));
  publishEnvelope(gw.bus, { ...exitEnvelope('ns1', 'skipped'), topic: '/tasks/start' });
  publishEnvelope(gw.bus, exitEnvelope('ns1', 'c1'));
  publishEnvelope(gw.bus, exitEnvelope('ns1', 'last'));
  const ids = () => seen.map((e) => evTask.TaskExit.decode(e.event!.value).containerId).filter((id) => id !== 'warm');
  const end = Date.now() + 5000;
  while (!ids().includes('last') && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  stream.cancel();
  assert.deepEqual(ids(), ['c1', 'last']);
  assert.ok(seen.every((e) => e.namespace === 'ns1' && e.topic === '/tasks/exit'));
});

function failure(stream: grpc.ClientReadableStream<Buffer>): Promise<grpc.ServiceError> {
  return new Promise((resolve) => {
    stream.on('error', resolve);
    stream.on('data', () => {});
  });
}

test('a malformed filter, or a request that does not decode, is InvalidArgument', async () => {
  assert.equal((await failure(subscribe(['topic==']))).code, grpc.status.INVALID_ARGUMENT);
  // Field 1 (filters) as a length-delimited string that runs past the end.
  const raw = gw.client.makeServerStreamRequest(SUBSCRIBE, (b: Buffer) => b, (b: Buffer) => b, Buffer.from([0x0a, 0x7f, 0x61]));
  const err = await failure(raw);
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.match(err.details, /^malformed Events\.Subscribe request: /);
});

test('a subscriber that stops reading is ended with RESOURCE_EXHAUSTED past the backlog bound', async () => {
  const stream = subscribe(['namespace==slow']);
  await delivered(stream, 'slow', 'warm');
  stream.pause(); // grpc-js stops reading: HTTP/2 flow control then holds the gateway's writes
  const piece = 512 << 10;
  // The call's own queue and the HTTP/2 windows take some; the bound the rest.
  const count = Math.ceil((MAX_EVENT_BACKLOG * 2) / piece) + 64;
  for (let i = 0; i < count; i++) publishEnvelope(gw.bus, exitEnvelope('slow', `p${i}`, piece));
  await gw.bus.nc.flush();
  let timer: NodeJS.Timeout | undefined;
  const err = await new Promise<grpc.ServiceError | undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), 30_000);
    stream.on('error', resolve);
    stream.on('data', () => {});
    stream.resume();
  });
  clearTimeout(timer);
  stream.cancel();
  assert.ok(err, 'the stream was not ended');
  assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED, err.message);
  assert.match(err.details, /subscribe again/);
});

test('a subscription outlives a NATS restart', async () => {
  const stream = subscribe(['namespace==restart']);
  await delivered(stream, 'restart', 'before');
  await gw.restartNats();
  const got = await delivered(stream, 'restart', 'after');
  stream.cancel();
  assert.equal(idOf(got), 'after');
});

test('with its bus connection closed for good, Subscribe is UNAVAILABLE (runs last: it closes the bus)', async () => {
  await gw.bus.close();
  const err = await failure(subscribe([]));
  assert.equal(err.code, grpc.status.UNAVAILABLE, err.message);
});
