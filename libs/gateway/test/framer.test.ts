// A server stream as the gateway relays one, @flotilla/grpc's server against a real grpc-js
// client: messages (and bus batches re-framed in place) arrive in order, followed by the
// status the call ends with; cancellation stops the writer and the size limit ends the call.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { StreamCursor } from '@flotilla/bus';
import { GrpcCode } from '@flotilla/errdefs';
import { GrpcError, GrpcServer, type StreamingCall } from '@flotilla/grpc';
import { GrpcFramer } from '../src/framer.js';

const identity = (b: Buffer) => b;
const def: grpc.ServiceDefinition = {
  Stream: {
    path: '/test.Writer/Stream', requestStream: false, responseStream: true,
    requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity,
  },
};
const LIMIT = 2 << 20;

/** What each call's handler saw, by request. */
const seen = new Map<string, { results: boolean[] }>();

/** One message as the gateway writes them: true while the call takes more. */
async function put(w: StreamingCall, msg: Buffer): Promise<boolean> {
  return w.write(msg) || w.drained();
}

function message(i: number, size: number): Buffer {
  const b = Buffer.alloc(size, i & 0xff);
  if (size >= 4) b.writeUInt32BE(i, 0);
  return b;
}

/** The messages of the `framed` case: sizes that fill, straddle and overflow 64 KiB batches. */
const FRAMED = Array.from({ length: 2000 }, (_, i) => message(i, i === 700 ? 300_000 : [0, 1, 3000, 5, 70_000][i % 5]!));

/** Bus stream batches (as the bus's StreamCursor cuts them) of `msgs`, with `limit` bytes each. */
async function batchesOf(msgs: Buffer[], limit: number): Promise<Uint8Array[]> {
  const cursor = new StreamCursor((async function* () { yield* msgs; })()[Symbol.asyncIterator](), limit);
  const out: Uint8Array[] = [];
  for (;;) {
    const { batch, end } = await cursor.next();
    out.push(batch);
    if (end) return out;
  }
}

/** Request `<case>`: what the server writes. */
const cases: Record<string, (w: StreamingCall) => Promise<boolean[]>> = {
  // Sizes around the edges: empty, tiny, typical container, 1 MiB content piece.
  mixed: async (w) => {
    const out: boolean[] = [];
    for (let i = 0; i < 3000; i++) out.push(await put(w, message(i, [0, 1, 3000, 5][i % 4]!)));
    out.push(await put(w, message(3000, 1 << 20)));
    return out;
  },
  error: async (w) => {
    const out = [await put(w, message(0, 10)), await put(w, message(1, 10))];
    seen.set('error', { results: out });
    throw new GrpcError(GrpcCode.NotFound, 'not found here');
  },
  tooLarge: async (w) => [await put(w, message(0, 10)), await put(w, message(1, LIMIT + 1))],
  // As the gateway relays a ListStream: bus batches re-framed, one write per run of frames.
  framed: async (w) => {
    const framer = new GrpcFramer(LIMIT);
    const out: boolean[] = [];
    for (const batch of await batchesOf(FRAMED, 64 * 1024)) {
      for (const piece of framer.push(batch)) out.push(Buffer.isBuffer(piece) ? w.writeFrames(piece) || (await w.drained()) : await put(w, piece.oversize));
    }
    return out;
  },
  // Written until the client goes away; the writer must report it, not hang or throw.
  endless: async (w) => {
    const out: boolean[] = [];
    for (let i = 0; i < 1_000_000; i++) {
      const ok = await put(w, message(i, 3000));
      out.push(ok);
      if (!ok) break;
    }
    return out;
  },
};

let server: GrpcServer;
let client: grpc.Client;
let dir: string;

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'stream-writer-'));
  server = new GrpcServer({ maxSendMessage: LIMIT });
  server.serverStream('/test.Writer/Stream', async (req, call) => {
    const name = req.toString();
    const results = await cases[name]!(call);
    seen.set(name, { results });
  });
  const sock = path.join(dir, 's.sock');
  await server.listen(sock);
  const Client = grpc.makeGenericClientConstructor(def, 'Writer');
  client = new Client(`unix://${sock}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 });
});
after(async () => {
  client?.close();
  await server?.close();
  await fs.rm(dir, { recursive: true, force: true });
});

function call(name: string, onMessage?: (b: Buffer, stream: grpc.ClientReadableStream<Buffer>) => void): Promise<{ messages: Buffer[]; status: grpc.StatusObject | grpc.ServiceError }> {
  return new Promise((resolve) => {
    const messages: Buffer[] = [];
    const s = (client as any).Stream(Buffer.from(name)) as grpc.ClientReadableStream<Buffer>;
    let error: grpc.ServiceError | undefined;
    s.on('data', (b: Buffer) => { messages.push(b); onMessage?.(b, s); });
    s.on('error', (e: grpc.ServiceError) => (error = e));
    s.on('status', (st: grpc.StatusObject) => setImmediate(() => resolve({ messages, status: error ?? st })));
  });
}

async function handled(name: string) {
  for (let i = 0; i < 500 && !seen.has(name); i++) await new Promise((r) => setTimeout(r, 10));
  return seen.get(name)!;
}

test('messages arrive as written, then OK', async () => {
  const { messages, status } = await call('mixed');
  assert.equal(status.code, grpc.status.OK);
  assert.equal(messages.length, 3001);
  for (let i = 0; i < 3000; i++) assert.deepEqual(messages[i], message(i, [0, 1, 3000, 5][i % 4]!), `message ${i}`);
  assert.deepEqual(messages[3000], message(3000, 1 << 20));
  const h = await handled('mixed');
  assert.ok(h.results.every((r) => r));
});

test('an error after some messages reaches the client after them, with its code', async () => {
  const { messages, status } = await call('error');
  assert.deepEqual(messages, [message(0, 10), message(1, 10)]);
  assert.equal(status.code, grpc.status.NOT_FOUND);
  assert.equal(status.details, 'not found here');
});

test('a message over the send limit ends the call with RESOURCE_EXHAUSTED', async () => {
  const { messages, status } = await call('tooLarge');
  assert.deepEqual(messages, [message(0, 10)]);
  assert.equal(status.code, grpc.status.RESOURCE_EXHAUSTED);
});

test('a client that cancels stops the writer', async () => {
  const { messages, status } = await call('endless', (_b, s) => { if (_b.readUInt32BE(0) === 100) s.cancel(); });
  assert.equal(status.code, grpc.status.CANCELLED);
  assert.ok(messages.length >= 101);
  const h = await handled('endless');
  assert.equal(h.results.at(-1), false);
  assert.ok(h.results.length < 1_000_000);
  for (let i = 0; i < messages.length; i++) assert.equal(messages[i]!.readUInt32BE(0), i);
});

test('bus batches re-framed in place arrive as the messages they carry, then OK', async () => {
  const { messages, status } = await call('framed');
  assert.equal(status.code, grpc.status.OK);
  assert.equal(messages.length, FRAMED.length);
  for (let i = 0; i < FRAMED.length; i++) assert.ok(messages[i]!.equals(FRAMED[i]!), `message ${i}`);
  const h = await handled('framed');
  assert.ok(h.results.every((r) => r));
});

test('the framer: whole messages in place, cut ones joined, oversize ones handed back', async () => {
  const msgs = [message(0, 10), message(1, 0), message(2, 250), message(3, 40), message(4, 600), message(5, 7)];
  const framer = new GrpcFramer(500);
  const frames: Buffer[] = [];
  const oversize: Buffer[] = [];
  const batches = await batchesOf(msgs, 128);
  assert.ok(batches.length > 3, 'messages 2 and 4 span batches');
  for (const batch of batches) {
    for (const piece of framer.push(batch)) {
      if (Buffer.isBuffer(piece)) frames.push(piece);
      else oversize.push(piece.oversize);
    }
  }
  assert.equal(framer.incomplete, false);
  // Parse the gRPC frames back: u8 0 | u32 length | bytes.
  const got: Buffer[] = [];
  const all = Buffer.concat(frames);
  for (let off = 0; off < all.length;) {
    assert.equal(all[off], 0, 'uncompressed flag');
    const n = all.readUInt32BE(off + 1);
    got.push(all.subarray(off + 5, off + 5 + n));
    off += 5 + n;
  }
  assert.deepEqual(got, [msgs[0], msgs[1], msgs[2], msgs[3], msgs[5]]);
  assert.deepEqual(oversize, [msgs[4]]);
  // A batch that ends inside a message leaves the framer incomplete.
  const cut = await batchesOf([message(9, 300)], 128);
  const f2 = new GrpcFramer(500);
  f2.push(cut[0]!);
  assert.equal(f2.incomplete, true);
  // It holds views of every batch the waiting message has parts in, and none once the
  // message is whole (what the gateway's recycling of batch memory relies on).
  assert.ok(cut.length >= 3);
  assert.equal(f2.holds(cut[0]!), true);
  f2.push(cut[1]!);
  assert.deepEqual(cut.slice(0, 3).map((b) => f2.holds(b)), [true, true, false]);
  for (const b of cut.slice(2)) f2.push(b);
  assert.equal(f2.incomplete, false);
  assert.deepEqual(cut.map((b) => f2.holds(b)), cut.map(() => false));
});
