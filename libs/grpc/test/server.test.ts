// @flotilla/grpc's server against real clients: grpc-js for gRPC semantics (unary, streams,
// bidi, errors, deadlines, cancellation, limits), node:http2 and a raw socket for HTTP/2
// itself (content types, refused prefaces, GOAWAY).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import { createHash } from 'node:crypto';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { GrpcCode } from '@flotilla/errdefs';
import { GrpcError, GrpcServer, type BidiCall } from '@flotilla/grpc';

const identity = (b: Buffer) => b;
const method = (name: string, requestStream: boolean, responseStream: boolean): grpc.MethodDefinition<Buffer, Buffer> => ({
  path: `/test.Svc/${name}`, requestStream, responseStream,
  requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity,
});
const def: grpc.ServiceDefinition = {
  Echo: method('Echo', false, false),
  Fail: method('Fail', false, false),
  Hang: method('Hang', false, false),
  Count: method('Count', false, true),
  Chat: method('Chat', true, true),
  Slow: method('Slow', true, true),
  Recycle: method('Recycle', true, true),
  Frames: method('Frames', false, true),
  Missing: method('Missing', false, false),
};
const MAX = 8 << 20;
const FRAMES_PER_BATCH = 40;
const FRAME_BODY = 50_000;

let server: GrpcServer;
let dir: string;
let sock: string;
let client: grpc.Client;
/** Calls the server saw cancelled, by name. */
const cancelled = new Set<string>();
let slowRead: Buffer[] = [];

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'grpc-server-'));
  sock = path.join(dir, 's.sock');
  server = new GrpcServer({ maxReceiveMessage: MAX, maxSendMessage: MAX, streamWindow: 1 << 20, connectionWindow: 4 << 20 });
  server.unary('/test.Svc/Echo', async (req, call) => Buffer.concat([Buffer.from(`${call.header('x-tag') ?? ''}|`), req]));
  server.unary('/test.Svc/Fail', async (req) => {
    throw new GrpcError(Number(req.toString()), 'it failed: «naïve» 100% ✓\nline two');
  });
  server.unary('/test.Svc/Hang', (req, call) => new Promise((_resolve, reject) => call.onCancel(() => {
    cancelled.add(`Hang:${req.toString()}`);
    reject(new GrpcError(GrpcCode.Canceled, 'cancelled'));
  })));
  server.serverStream('/test.Svc/Count', async (req, call) => {
    const n = Number(req.toString());
    call.onCancel(() => cancelled.add('Count'));
    for (let i = 0; i < n && !call.cancelled; i++) {
      const m = Buffer.alloc(1000 + (i % 7) * 5000, i & 0xff);
      m.writeUInt32BE(i, 0);
      if (!call.write(m) && !(await call.drained())) return;
    }
  });
  const chat = async (call: BidiCall) => {
    for (let m = await call.read(); m; m = await call.read()) {
      if (m.toString() === 'fail') throw new GrpcError(GrpcCode.FailedPrecondition, 'told to fail');
      call.write(Buffer.concat([Buffer.from('re:'), m]));
    }
  };
  server.bidi('/test.Svc/Chat', chat);
  // Reads nothing until told, so the client's messages pile up against the windows.
  server.bidi('/test.Svc/Slow', async (call) => {
    await new Promise((r) => setTimeout(r, 300));
    for (let m = await call.read(); m; m = await call.read()) slowRead.push(m);
    call.write(Buffer.from(String(slowRead.length)));
  });
  // Answers each message with its sha256, then gives its memory back (twice, which must be
  // harmless); counts the messages that arrived in memory given back before.
  server.bidi('/test.Svc/Recycle', async (call) => {
    const given = new Set<ArrayBufferLike>();
    let reused = 0;
    for (let m = await call.read(); m; m = await call.read()) {
      if (given.has(m.buffer)) reused++;
      call.write(Buffer.from(createHash('sha256').update(m).digest('hex')));
      given.add(m.buffer);
      call.recycle(m);
      call.recycle(m);
    }
    call.write(Buffer.from(`reused ${reused}`));
  });
  // Batches of whole messages written with writeFrames from two buffers, each refilled (and
  // first overwritten) only once its written() has run: if that ran while the socket still
  // held a view of the buffer, the client would receive the garbage.
  server.serverStream('/test.Svc/Frames', async (req, call) => {
    const batches = Number(req.toString());
    const free = [Buffer.alloc(FRAMES_PER_BATCH * (5 + FRAME_BODY)), Buffer.alloc(FRAMES_PER_BATCH * (5 + FRAME_BODY))];
    let written = 0;
    for (let b = 0; b < batches; b++) {
      while (free.length === 0) await new Promise((r) => setImmediate(r));
      const buf = free.pop()!;
      for (let j = 0; j < FRAMES_PER_BATCH; j++) {
        const o = j * (5 + FRAME_BODY);
        buf[o] = 0;
        buf.writeUInt32BE(FRAME_BODY, o + 1);
        buf.fill((b * FRAMES_PER_BATCH + j) & 0xff, o + 5, o + 5 + FRAME_BODY);
        buf.writeUInt32BE(b * FRAMES_PER_BATCH + j, o + 5);
      }
      call.writeFrames(buf, () => {
        buf.fill(0xee);
        free.push(buf);
        written++;
      });
    }
    call.writeFrames(Buffer.alloc(0), () => written++); // nothing to write: at once
    while (written < batches + 1) await new Promise((r) => setImmediate(r));
    call.write(Buffer.from(`written ${written}`));
  });
  await server.listen(sock);
  const Client = grpc.makeGenericClientConstructor(def, 'Svc');
  client = new Client(`unix://${sock}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1, 'grpc.max_send_message_length': -1 });
});

after(async () => {
  client?.close();
  await server?.close(500);
  await fs.rm(dir, { recursive: true, force: true });
});

function unary(name: string, req: Buffer, opts: { md?: grpc.Metadata; deadline?: number } = {}): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    (client as any)[name](req, opts.md ?? new grpc.Metadata(), opts.deadline ? { deadline: opts.deadline } : {}, (err: grpc.ServiceError | null, res: Buffer) => (err ? reject(err) : resolve(res)));
  });
}

test('unary: request headers and bytes reach the handler, its reply comes back', async () => {
  const md = new grpc.Metadata();
  md.set('x-tag', 'abc');
  assert.equal((await unary('Echo', Buffer.from('hello'), { md })).toString(), 'abc|hello');
  // Many calls on one connection, concurrently.
  const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => unary('Echo', Buffer.from(String(i)))));
  replies.forEach((r, i) => assert.equal(r.toString(), `|${i}`));
});

test('unary: messages larger than every window go both ways', async () => {
  const big = Buffer.alloc(6 << 20);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32BE(i, i);
  const res = await unary('Echo', big);
  assert.equal(res.length, big.length + 1);
  assert.ok(res.subarray(1).equals(big));
});

test('errors: code and message arrive as thrown, the message percent-encoded on the wire', async () => {
  for (const code of [GrpcCode.NotFound, GrpcCode.AlreadyExists, GrpcCode.FailedPrecondition, GrpcCode.Unavailable]) {
    await assert.rejects(unary('Fail', Buffer.from(String(code))), (e: grpc.ServiceError) => e.code === code && e.details === 'it failed: «naïve» 100% ✓\nline two');
  }
});

test('an unknown method or service is UNIMPLEMENTED, in grpc-go\'s words', async () => {
  await assert.rejects(unary('Missing', Buffer.alloc(0)), (e: grpc.ServiceError) => e.code === grpc.status.UNIMPLEMENTED && e.details === 'unknown method Missing for service test.Svc');
  const other = new grpc.Client(`unix://${sock}`, grpc.credentials.createInsecure());
  try {
    await assert.rejects(new Promise((resolve, reject) => other.makeUnaryRequest('/no.Such/Thing', identity, identity, Buffer.alloc(0), (e, r) => (e ? reject(e) : resolve(r)))),
      (e: grpc.ServiceError) => e.code === grpc.status.UNIMPLEMENTED && e.details === 'unknown service no.Such');
  } finally {
    other.close();
  }
});

test('a request over the receive limit is RESOURCE_EXHAUSTED and the connection still works', async () => {
  await assert.rejects(unary('Echo', Buffer.alloc(MAX + 1)), (e: grpc.ServiceError) => e.code === grpc.status.RESOURCE_EXHAUSTED && /larger than max/.test(e.details));
  assert.equal((await unary('Echo', Buffer.from('after'))).toString(), '|after');
});

test('a deadline ends the call with DEADLINE_EXCEEDED and cancels the handler', async () => {
  await assert.rejects(unary('Hang', Buffer.from('dl'), { deadline: Date.now() + 200 }), (e: grpc.ServiceError) => e.code === grpc.status.DEADLINE_EXCEEDED);
  for (let i = 0; i < 100 && !cancelled.has('Hang:dl'); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cancelled.has('Hang:dl'), 'the handler saw the cancellation');
});

test('a client that cancels a unary call cancels the handler', async () => {
  const call = (client as any).Hang(Buffer.from('c'), new grpc.Metadata(), () => {});
  await new Promise((r) => setTimeout(r, 100));
  call.cancel();
  for (let i = 0; i < 100 && !cancelled.has('Hang:c'); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cancelled.has('Hang:c'));
});

test('server stream: 20,000 messages (60 MB) in order with flow control, then OK', async () => {
  const n = 20_000;
  const got = await new Promise<number>((resolve, reject) => {
    let i = 0;
    const s = (client as any).Count(Buffer.from(String(n))) as grpc.ClientReadableStream<Buffer>;
    s.on('data', (m: Buffer) => {
      if (m.readUInt32BE(0) !== i || m.length !== 1000 + (i % 7) * 5000) reject(new Error(`message ${i} wrong`));
      i++;
    });
    s.on('error', reject);
    s.on('status', (st: grpc.StatusObject) => (st.code === 0 ? setImmediate(() => resolve(i)) : reject(new Error(st.details))));
  });
  assert.equal(got, n);
});

test('server stream: writeFrames\' written() runs once the socket is done with the bytes', async () => {
  // 30 batches of 2 MB against windows of 1 MiB (stream) and 4 MiB (connection).
  const batches = 30;
  const got = await new Promise<{ n: number; last: string }>((resolve, reject) => {
    let n = 0;
    let last = '';
    const s = (client as any).Frames(Buffer.from(String(batches))) as grpc.ClientReadableStream<Buffer>;
    s.on('data', (m: Buffer) => {
      if (n === batches * FRAMES_PER_BATCH) return void (last = m.toString());
      if (m.length !== FRAME_BODY || m.readUInt32BE(0) !== n || m[FRAME_BODY - 1] !== (n & 0xff)) reject(new Error(`message ${n} wrong`));
      n++;
    });
    s.on('error', reject);
    s.on('status', (st: grpc.StatusObject) => (st.code === 0 ? setImmediate(() => resolve({ n, last })) : reject(new Error(st.details))));
  });
  assert.deepEqual(got, { n: batches * FRAMES_PER_BATCH, last: `written ${batches + 1}` });
});

test('server stream: a client that cancels stops the handler', async () => {
  cancelled.delete('Count');
  await new Promise<void>((resolve) => {
    const s = (client as any).Count(Buffer.from('10000000')) as grpc.ClientReadableStream<Buffer>;
    let i = 0;
    s.on('data', () => { if (++i === 50) s.cancel(); });
    s.on('error', (e: grpc.ServiceError) => { assert.equal(e.code, grpc.status.CANCELLED); resolve(); });
  });
  for (let i = 0; i < 100 && !cancelled.has('Count'); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cancelled.has('Count'));
});

function chat(name: string, msgs: Buffer[]): Promise<{ replies: string[]; status: grpc.StatusObject }> {
  return new Promise((resolve) => {
    const s = (client as any)[name]() as grpc.ClientDuplexStream<Buffer, Buffer>;
    const replies: string[] = [];
    s.on('data', (m: Buffer) => replies.push(m.toString()));
    s.on('error', () => {});
    s.on('status', (st: grpc.StatusObject) => setImmediate(() => resolve({ replies, status: st })));
    for (const m of msgs) s.write(m);
    s.end();
  });
}

test('bidi: each message answered in order, OK after the client half-closes', async () => {
  const msgs = Array.from({ length: 300 }, (_, i) => Buffer.from(`m${i}`));
  const { replies, status } = await chat('Chat', msgs);
  assert.equal(status.code, grpc.status.OK);
  assert.deepEqual(replies, msgs.map((m) => `re:${m}`));
});

test('bidi: a failure ends the stream with its status after the answers before it', async () => {
  const { replies, status } = await chat('Chat', [Buffer.from('a'), Buffer.from('fail'), Buffer.from('b')]);
  assert.deepEqual(replies, ['re:a']);
  assert.equal(status.code, grpc.status.FAILED_PRECONDITION);
  assert.equal(status.details, 'told to fail');
});

test('bidi: a handler that reads late loses nothing (windows hold the client back)', async () => {
  slowRead = [];
  // Large messages span frames; small ones sit inside one, in the memory of a socket read
  // that later reads overwrite: what the server holds for the handler must be its own.
  const msgs = Array.from({ length: 80 }, (_, i) => (i % 2 ? Buffer.from(`small ${i}`) : Buffer.alloc(256 << 10, i)));
  const { replies, status } = await chat('Slow', msgs);
  assert.equal(status.code, grpc.status.OK);
  assert.deepEqual(replies, ['80']);
  slowRead.forEach((m, i) => assert.ok(m.equals(msgs[i]!), `message ${i}`));
});

test('bidi: recycled message memory takes later messages, and every message arrives intact', async () => {
  // 1 MiB messages span frames (their memory can be given back); 3-byte ones sit inside one
  // frame (views of the socket's reads: recycling them must change nothing).
  const msgs = Array.from({ length: 24 }, (_, i) => (i % 4 === 3 ? Buffer.from(`s${i % 10}x`) : Buffer.alloc((1 << 20) - (i % 3), i + 1)));
  const { replies, status } = await chat('Recycle', msgs);
  assert.equal(status.code, grpc.status.OK);
  assert.deepEqual(replies.slice(0, -1), msgs.map((m) => createHash('sha256').update(m).digest('hex')));
  const reused = Number(/^reused (\d+)$/.exec(replies.at(-1)!)![1]);
  assert.ok(reused >= 10, `only ${reused} of 18 large messages arrived in recycled memory`);
});

test('HTTP/2: frames and headers cut at any byte across socket reads arrive whole', async () => {
  // A proxy re-cuts the client's byte stream into pieces of 1 to ~70,000 bytes, one write per
  // turn of the event loop, so frame headers, frames and messages straddle the server's reads.
  const sock3 = path.join(dir, 'cut.sock');
  const sizes = [1, 2, 3, 5, 8, 9, 10, 13, 16393, 7, 70_001, 4, 16_384, 11, 1000];
  const proxy = net.createServer((down) => {
    const up = net.connect(sock);
    up.pipe(down);
    let queue = Buffer.alloc(0);
    let k = 0;
    let pumping = false;
    const pump = async () => {
      pumping = true;
      while (queue.length > 0) {
        const n = Math.min(queue.length, sizes[k++ % sizes.length]!);
        up.write(queue.subarray(0, n));
        queue = queue.subarray(n);
        await new Promise((r) => setImmediate(r));
      }
      pumping = false;
    };
    down.on('data', (d) => {
      queue = Buffer.concat([queue, d]);
      if (!pumping) void pump();
    });
    down.on('close', () => up.destroy());
    up.on('close', () => down.destroy());
  });
  await new Promise<void>((r) => proxy.listen(sock3, r));
  const Client = grpc.makeGenericClientConstructor(def, 'Svc');
  const c3 = new Client(`unix://${sock3}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1, 'grpc.max_send_message_length': -1 }) as any;
  try {
    const big = Buffer.alloc(3 << 20);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32BE(i, i);
    for (const req of [Buffer.from('small'), big, Buffer.alloc(0)]) {
      const md = new grpc.Metadata();
      md.set('x-tag', 't'.repeat(300));
      const res = await new Promise<Buffer>((resolve, reject) => c3.Echo(req, md, (e: Error | null, r: Buffer) => (e ? reject(e) : resolve(r))));
      assert.ok(res.equals(Buffer.concat([Buffer.from(`${'t'.repeat(300)}|`), req])), `echo of ${req.length} bytes`);
    }
  } finally {
    c3.close();
    proxy.close();
  }
});

test('HTTP/2: a wrong content type is 415, a wrong method 405; the windows offered are ours', async () => {
  const s = http2.connect('http://localhost', { createConnection: () => net.connect(sock) });
  try {
    const settings = await new Promise<http2.Settings>((r) => s.once('remoteSettings', r));
    assert.equal(settings.initialWindowSize, 1 << 20);
    const status = (headers: http2.OutgoingHttpHeaders) => new Promise<number>((resolve, reject) => {
      const req = s.request(headers);
      req.on('response', (h) => resolve(Number(h[':status'])));
      req.on('error', reject);
      req.end();
      req.resume();
    });
    assert.equal(await status({ ':method': 'POST', ':path': '/test.Svc/Echo', 'content-type': 'text/plain' }), 415);
    assert.equal(await status({ ':method': 'GET', ':path': '/test.Svc/Echo', 'content-type': 'application/grpc' }), 405);
  } finally {
    s.close();
  }
});

test('HTTP/2: headers past the header-list bound are 431, and the connection goes on', async () => {
  const s = http2.connect('http://localhost', { createConnection: () => net.connect(sock), maxHeaderListPairs: 4000, maxSendHeaderBlockLength: 1 << 20 });
  try {
    await new Promise((r) => s.once('remoteSettings', r));
    const call = (headers: http2.OutgoingHttpHeaders) => new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
      const req = s.request({ ':method': 'POST', ':path': '/test.Svc/Echo', 'content-type': 'application/grpc', te: 'trailers', ...headers });
      let status = 0;
      const body: Buffer[] = [];
      req.on('response', (h) => { status = Number(h[':status']); });
      req.on('data', (d: Buffer) => body.push(d));
      req.on('end', () => resolve({ status, body: Buffer.concat(body) }));
      req.on('error', reject);
      req.end(Buffer.from([0, 0, 0, 0, 2, 0x68, 0x69])); // one gRPC message: "hi"
    });
    // 300 headers of 1 KiB: 300 KiB of header list against the server's 256 KiB.
    const big: http2.OutgoingHttpHeaders = {};
    for (let i = 0; i < 300; i++) big[`x-big-${i}`] = 'v'.repeat(1024);
    assert.equal((await call(big)).status, 431);
    // The decoder kept the connection's table in step: the next call on it works.
    const ok = await call({ 'x-tag': 'after' });
    assert.equal(ok.status, 200);
    assert.equal(ok.body.subarray(5).toString(), 'after|hi');
  } finally {
    s.close();
  }
});

test('HTTP/2: a client that does not speak it is sent GOAWAY and disconnected', async () => {
  const c = net.connect(sock);
  const got: Buffer[] = [];
  c.on('data', (d) => got.push(d));
  c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await new Promise((r) => c.on('close', r));
  const all = Buffer.concat(got);
  // Our SETTINGS first, then a GOAWAY (type 7) with PROTOCOL_ERROR.
  let off = 0;
  const types: number[] = [];
  let code = -1;
  while (off + 9 <= all.length) {
    const len = all.readUIntBE(off, 3);
    types.push(all[off + 3]!);
    if (all[off + 3] === 7) code = all.readUInt32BE(off + 13);
    off += 9 + len;
  }
  assert.deepEqual(types.filter((t) => t === 7), [7]);
  assert.equal(code, 1);
});

test('close(): GOAWAY lets the call in progress finish, then the connection ends', async () => {
  const s2 = new GrpcServer();
  const sock2 = path.join(dir, 's2.sock');
  let release!: () => void;
  s2.unary('/test.Svc/Echo', async (req) => {
    await new Promise<void>((r) => (release = r));
    return req;
  });
  await s2.listen(sock2);
  const Client = grpc.makeGenericClientConstructor(def, 'Svc');
  const c2 = new Client(`unix://${sock2}`, grpc.credentials.createInsecure()) as any;
  try {
    const pending = new Promise<Buffer>((resolve, reject) => c2.Echo(Buffer.from('late'), (e: Error | null, r: Buffer) => (e ? reject(e) : resolve(r))));
    for (let i = 0; i < 100 && !release; i++) await new Promise((r) => setTimeout(r, 10));
    const closing = s2.close(5000);
    await new Promise((r) => setTimeout(r, 50));
    release();
    assert.equal((await pending).toString(), 'late');
    await closing;
  } finally {
    c2.close();
  }
});
