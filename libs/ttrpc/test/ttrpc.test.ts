// ttrpc client and server against each other, plus the wire format checked byte by byte
// from a raw socket so the two cannot agree on a mistake.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ContainerdError, ErrorClass, errNotFound, errFailedPrecondition } from '@flotilla/errdefs';
import {
  TtrpcClient, TtrpcServer, FrameReader, MAX_MESSAGE, TYPE_REQUEST, TYPE_RESPONSE,
  decodeRequest, decodeResponse, encodeRequest, frame,
} from '@flotilla/ttrpc';

const SVC = 'flotilla.test.v1.Echo';
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

async function tmpSock(t: { name: string; after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ttrpc-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return path.join(dir, `${t.name.replace(/\W+/g, '-').slice(0, 40)}.sock`);
}

async function withServer(t: { name: string; after: (fn: () => Promise<void> | void) => void }, setup: (s: TtrpcServer) => void) {
  const sock = await tmpSock(t);
  const server = new TtrpcServer();
  setup(server);
  await server.listen(sock);
  const client = await TtrpcClient.connect(sock);
  t.after(async () => {
    client.close();
    await server.close();
  });
  return { sock, server, client };
}

test('unary calls are multiplexed and answered out of order', async (t) => {
  const { client } = await withServer(t, (s) => {
    s.register(SVC, 'Echo', async (p) => {
      const ms = Number(dec(p));
      await new Promise((r) => setTimeout(r, ms));
      return enc(`done ${ms}`);
    });
  });
  const order: string[] = [];
  const calls = [60, 1, 30].map((ms) =>
    client.call(SVC, 'Echo', enc(String(ms))).then((b) => {
      order.push(dec(b));
      return dec(b);
    }),
  );
  assert.deepEqual(await Promise.all(calls), ['done 60', 'done 1', 'done 30']);
  assert.deepEqual(order, ['done 1', 'done 30', 'done 60']);
});

test('metadata and an empty payload reach the handler', async (t) => {
  let seen: Record<string, string> | undefined;
  let payloadLen = -1;
  const { client } = await withServer(t, (s) => {
    s.register(SVC, 'Meta', async (p, ctx) => {
      seen = ctx.metadata;
      payloadLen = p.length;
      return new Uint8Array(0);
    });
  });
  const out = await client.call(SVC, 'Meta', new Uint8Array(0), { metadata: { 'containerd-namespace-ttrpc': 'ns1', a: 'b' } });
  assert.equal(out.length, 0);
  assert.equal(payloadLen, 0);
  assert.deepEqual(seen, { 'containerd-namespace-ttrpc': 'ns1', a: 'b' });
});

test('handler errors become statuses and come back as the same error class', async (t) => {
  const { client } = await withServer(t, (s) => {
    s.register(SVC, 'NotFound', async () => {
      throw errNotFound('thing "x"');
    });
    s.register(SVC, 'Precondition', async () => {
      throw errFailedPrecondition('task must be stopped');
    });
    s.register(SVC, 'Plain', async () => {
      throw new Error('boom');
    });
  });
  await assert.rejects(client.call(SVC, 'NotFound', enc('')), (err: unknown) => {
    assert.ok(err instanceof ContainerdError);
    assert.equal(err.errorClass, ErrorClass.NotFound);
    assert.equal(err.message, 'thing "x": not found');
    return true;
  });
  await assert.rejects(client.call(SVC, 'Precondition', enc('')), {
    errorClass: ErrorClass.FailedPrecondition,
    message: 'task must be stopped: failed precondition',
  });
  await assert.rejects(client.call(SVC, 'Plain', enc('')), { errorClass: ErrorClass.Unknown, message: 'boom: unknown' });
  await assert.rejects(client.call(SVC, 'Missing', enc('')), { errorClass: ErrorClass.NotImplemented, message: 'method Missing: not implemented' });
  await assert.rejects(client.call('no.such.Service', 'X', enc('')), { errorClass: ErrorClass.NotImplemented, message: 'service no.such.Service: not implemented' });
  // The connection survives errors.
  assert.equal(client.isClosed, false);
});

test('a deadline rejects the call as DeadlineExceeded and aborts the handler', async (t) => {
  let aborted: Promise<void> | undefined;
  const { client } = await withServer(t, (s) => {
    s.register(SVC, 'Hang', (_p, ctx) => {
      aborted = new Promise((resolve) => ctx.signal.addEventListener('abort', () => resolve()));
      return new Promise(() => {});
    });
  });
  await assert.rejects(client.call(SVC, 'Hang', enc(''), { timeoutMs: 50 }), { errorClass: ErrorClass.DeadlineExceeded });
  await aborted; // resolves only if the server saw timeout_nano and aborted the handler
});

test('losing the connection rejects pending calls as Unavailable and runs onClose', async (t) => {
  const { client, server } = await withServer(t, (s) => {
    s.register(SVC, 'Hang', () => new Promise(() => {}));
  });
  let closed = false;
  client.onClose(() => (closed = true));
  const pending = assert.rejects(client.call(SVC, 'Hang', enc('')), { errorClass: ErrorClass.Unavailable });
  await new Promise((r) => setTimeout(r, 20));
  await server.close();
  await pending;
  assert.equal(closed, true);
  assert.equal(client.isClosed, true);
  await assert.rejects(client.call(SVC, 'Hang', enc('')), { errorClass: ErrorClass.Unavailable });
});

test('connecting to nothing is Unavailable', async (t) => {
  const sock = await tmpSock(t);
  await assert.rejects(TtrpcClient.connect(sock), { errorClass: ErrorClass.Unavailable });
  await assert.rejects(TtrpcClient.connect(`unix://${sock}`), { errorClass: ErrorClass.Unavailable });
});

test('the client writes ttrpc frames: 10-byte header, odd stream ids stepping by 2', async (t) => {
  const sock = await tmpSock(t);
  const seen: { streamId: number; type: number; flags: number; service: string; method: string; timeoutNano: number }[] = [];
  const raw = net.createServer((c) => {
    let buf = Buffer.alloc(0);
    c.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 10 && buf.length >= 10 + buf.readUInt32BE(0)) {
        const len = buf.readUInt32BE(0);
        const streamId = buf.readUInt32BE(4);
        const req = decodeRequest(buf.subarray(10, 10 + len));
        seen.push({ streamId, type: buf[8]!, flags: buf[9]!, service: req.service, method: req.method, timeoutNano: req.timeoutNano });
        buf = buf.subarray(10 + len);
        // Response: status absent (OK), payload echoes the method name.
        const body = Buffer.concat([Buffer.from([0x12, req.method.length]), Buffer.from(req.method)]);
        const hdr = Buffer.alloc(10);
        hdr.writeUInt32BE(body.length, 0);
        hdr.writeUInt32BE(streamId, 4);
        hdr[8] = 2;
        c.write(Buffer.concat([hdr, body]));
      }
    });
  });
  await new Promise<void>((r) => raw.listen(sock, r));
  const client = await TtrpcClient.connect(sock);
  t.after(() => {
    client.close();
    raw.close();
  });
  const got = await Promise.all(['A', 'B', 'C'].map((m) => client.call(SVC, m, enc('x'), { timeoutMs: 2000 })));
  assert.deepEqual(got.map(dec), ['A', 'B', 'C']);
  assert.deepEqual(seen.map((s) => s.streamId), [1, 3, 5]);
  for (const s of seen) {
    assert.equal(s.type, TYPE_REQUEST);
    assert.equal(s.flags, 0);
    assert.equal(s.service, SVC);
    assert.equal(s.timeoutNano, 2_000_000_000);
  }
});

test('oversized messages fail one stream, not the connection', async (t) => {
  const { sock, client } = await withServer(t, (s) => {
    s.register(SVC, 'Len', async (p) => enc(String(p.length)));
  });
  // Refused locally before sending.
  await assert.rejects(client.call(SVC, 'Len', new Uint8Array(MAX_MESSAGE + 1)), { errorClass: ErrorClass.InvalidArgument });
  // Just under the limit goes through (payload plus Request framing must fit).
  assert.equal(dec(await client.call(SVC, 'Len', new Uint8Array(MAX_MESSAGE - 100))), String(MAX_MESSAGE - 100));

  // A peer that sends an oversized frame anyway gets ResourceExhausted on that stream and
  // can go on using the connection.
  const raw = net.connect(sock);
  await new Promise((r) => raw.once('connect', r));
  const reader = new FrameReader();
  const frames: { streamId: number; type: number; payload?: Buffer }[] = [];
  raw.on('data', (d: Buffer) => frames.push(...reader.push(d)));
  const big = new Uint8Array(MAX_MESSAGE + 10);
  raw.write(frame(1, TYPE_REQUEST, big));
  raw.write(frame(3, TYPE_REQUEST, encodeRequest({ service: SVC, method: 'Len', payload: enc('abc'), timeoutNano: 0, metadata: [] })));
  while (frames.length < 2) await new Promise((r) => setTimeout(r, 10));
  raw.destroy();
  const byId = new Map(frames.map((f) => [f.streamId, f]));
  assert.equal(byId.get(1)!.type, TYPE_RESPONSE);
  assert.equal(decodeResponse(byId.get(1)!.payload!).status?.code, 8 /* ResourceExhausted */);
  const ok = decodeResponse(byId.get(3)!.payload!);
  assert.equal(ok.status?.code ?? 0, 0);
  assert.equal(dec(ok.payload), '3');
});

test('even stream ids are refused as the Go server refuses them', async (t) => {
  const { sock } = await withServer(t, (s) => {
    s.register(SVC, 'Len', async (p) => enc(String(p.length)));
  });
  const raw = net.connect(sock);
  await new Promise((r) => raw.once('connect', r));
  const reader = new FrameReader();
  const got = new Promise<{ streamId: number; payload?: Buffer }>((resolve) =>
    raw.on('data', (d: Buffer) => {
      const f = reader.push(d);
      if (f.length) resolve(f[0]!);
    }),
  );
  raw.write(frame(2, TYPE_REQUEST, encodeRequest({ service: SVC, method: 'Len', payload: enc('a'), timeoutNano: 0, metadata: [] })));
  const f = await got;
  raw.destroy();
  assert.equal(f.streamId, 2);
  assert.equal(decodeResponse(f.payload!).status?.code, 3 /* InvalidArgument */);
});

test('listen makes a filesystem socket with the mode asked and refuses a live one', async (t) => {
  const { sock } = await withServer(t, () => {});
  const st = await fs.lstat(sock);
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o777, 0o600);
  await assert.rejects(new TtrpcServer().listen(sock), { errorClass: ErrorClass.AlreadyExists });

  // A stale socket file (nobody listening) is replaced.
  const stale = path.join(path.dirname(sock), 'stale.sock');
  const dead = net.createServer();
  await new Promise<void>((r) => dead.listen(stale, r));
  // Node unlinks the socket on close; recreate the leftover a crashed process leaves.
  await new Promise<void>((r) => dead.close(() => r()));
  const s2 = new TtrpcServer();
  await s2.listen(stale, 0o660);
  assert.equal((await fs.lstat(stale)).mode & 0o777, 0o660);
  await s2.close();
  await assert.rejects(fs.lstat(stale), { code: 'ENOENT' });
});
