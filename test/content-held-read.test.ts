// A client reads a blob as an Info and then a Read of the same digest (containerd's content
// proxy, i.e. ctr). The gateway asks the content service for small blobs' bytes with the
// Info and answers the Read that is the next call on the same connection from them
// (libs/gateway/src/server.ts, contentInfo). Every other Read goes to the content service,
// and the answers are the service's either way. Direct links are off, so each Read the
// service gets crosses nats-server, where this test counts them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from 'nats';
import { content as api } from '@flotilla/api';
import { startStack, testNamespace, type Stack } from '@flotilla/testing';

const SVC = '/containerd.services.content.v1.Content/';
const sha = (b: Uint8Array) => 'sha256:' + createHash('sha256').update(b).digest('hex');

let stack: Stack;
let nc: NatsConnection;
let reads = 0;
const ns = testNamespace('held-read');
const small = randomBytes(3000);
const big = randomBytes(100 * 1024); // past the 64 KiB an Info brings along

before(async () => {
  stack = await startStack({ env: { FLOTILLA_DIRECT: 'off' } });
  nc = await connect({ servers: stack.env.NATS_URL });
  nc.subscribe('flotilla.v1.svc.content.Read', { callback: () => void reads++ });
  for (const [b, r] of [[small, 'held-small'], [big, 'held-big']] as const) {
    const ing = await stack.ctr(['content', 'ingest', '--expected-digest', sha(b), r], { namespace: ns, input: b });
    assert.equal(ing.code, 0, ing.stderr);
  }
});

after(async () => {
  await nc?.close();
  await stack?.stop();
});

/** One gRPC connection, making content calls on it in order (grpc-js shares connections between clients unless told not to). */
class Conn {
  private readonly client = new grpc.Client(`unix://${stack.socket}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
  private md(namespace: string): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set('containerd-namespace', namespace);
    return md;
  }
  info(digest: string, namespace = ns): Promise<{ code: number; size?: number }> {
    return new Promise((resolve) => {
      this.client.makeUnaryRequest(SVC + 'Info', (m: api.InfoRequest) => Buffer.from(api.InfoRequest.encode(m).finish()), (b: Buffer) => api.InfoResponse.decode(b), { digest }, this.md(namespace), (err, res) =>
        resolve(err ? { code: err.code } : { code: 0, size: res!.info!.size }),
      );
    });
  }
  read(digest: string, offset = 0, size = 0, namespace = ns): Promise<{ code: number; details: string; replies: api.ReadContentResponse[] }> {
    return new Promise((resolve) => {
      const replies: api.ReadContentResponse[] = [];
      const call = this.client.makeServerStreamRequest(SVC + 'Read', (m: api.ReadContentRequest) => Buffer.from(api.ReadContentRequest.encode(m).finish()), (b: Buffer) => api.ReadContentResponse.decode(b), { digest, offset, size }, this.md(namespace));
      call.on('data', (d: api.ReadContentResponse) => replies.push(d));
      call.on('error', () => {});
      call.on('status', (s) => resolve({ code: s.code, details: s.code ? s.details : '', replies }));
    });
  }
  /** Info with the request bytes as given (not necessarily a valid InfoRequest). */
  rawInfo(req: Buffer): Promise<{ code: number; details: string }> {
    return new Promise((resolve) => {
      this.client.makeUnaryRequest(SVC + 'Info', (b: Buffer) => b, (b: Buffer) => b, req, this.md(ns), (err) => resolve(err ? { code: err.code, details: err.details } : { code: 0, details: '' }));
    });
  }
  /** Read with the request bytes as given. */
  rawRead(req: Buffer): Promise<{ code: number; details: string }> {
    return new Promise((resolve) => {
      const call = this.client.makeServerStreamRequest(SVC + 'Read', (b: Buffer) => b, (b: Buffer) => b, req, this.md(ns));
      call.on('data', () => {});
      call.on('error', () => {});
      call.on('status', (s) => resolve({ code: s.code, details: s.details }));
    });
  }
  close(): void {
    this.client.close();
  }
}

/** The Reads that reached the content service while `fn` ran (after NATS has delivered them). */
async function servedReads(fn: () => Promise<void>): Promise<number> {
  await nc.flush();
  const before = reads;
  await fn();
  await nc.flush();
  return reads - before;
}

const joined = (r: { replies: api.ReadContentResponse[] }) => Buffer.concat(r.replies.map((x) => Buffer.from(x.data)));

test('a Read right after an Info of the same small blob is answered by the gateway, with the same bytes and offsets', async () => {
  const c = new Conn();
  try {
    let whole: Awaited<ReturnType<Conn['read']>> | undefined;
    let part: Awaited<ReturnType<Conn['read']>> | undefined;
    let tail: Awaited<ReturnType<Conn['read']>> | undefined;
    const n = await servedReads(async () => {
      assert.deepEqual(await c.info(sha(small)), { code: 0, size: small.length });
      whole = await c.read(sha(small));
      assert.equal((await c.info(sha(small))).code, 0);
      part = await c.read(sha(small), 100, 50);
      assert.equal((await c.info(sha(small))).code, 0);
      tail = await c.read(sha(small), small.length - 10, 1000); // size past the end: to the end
    });
    assert.equal(n, 0, 'no Read reached the content service');
    assert.equal(whole!.code, 0, whole!.details);
    assert.ok(joined(whole!).equals(small));
    assert.deepEqual(part!.replies.map((r) => r.offset), [0]); // offsets count from the read's start
    assert.ok(joined(part!).equals(small.subarray(100, 150)));
    assert.ok(joined(tail!).equals(small.subarray(small.length - 10)));
    // The same Reads from the service, on a fresh connection with no Info before them.
    const d = new Conn();
    try {
      const n2 = await servedReads(async () => {
        const a = await d.read(sha(small), 100, 50);
        assert.deepEqual(a.replies, part!.replies);
      });
      assert.equal(n2, 1);
    } finally {
      d.close();
    }
  } finally {
    c.close();
  }
});

test('every other Read goes to the content service and gets its answers', async (t) => {
  const c = new Conn();
  const other = new Conn();
  try {
    await t.test('a large blob', async () => {
      const n = await servedReads(async () => {
        assert.deepEqual(await c.info(sha(big)), { code: 0, size: big.length });
        const r = await c.read(sha(big));
        assert.equal(r.code, 0, r.details);
        assert.ok(joined(r).equals(big));
      });
      assert.equal(n, 1);
    });
    await t.test('another call between the Info and the Read', async () => {
      const n = await servedReads(async () => {
        assert.equal((await c.info(sha(small))).code, 0);
        assert.equal((await c.info(sha(big))).code, 0);
        const r = await c.read(sha(small));
        assert.ok(joined(r).equals(small));
      });
      assert.equal(n, 1);
    });
    await t.test('the Read on another connection', async () => {
      const n = await servedReads(async () => {
        assert.equal((await c.info(sha(small))).code, 0);
        const r = await other.read(sha(small));
        assert.ok(joined(r).equals(small));
      });
      assert.equal(n, 1);
    });
    await t.test('a Read of another digest', async () => {
      const n = await servedReads(async () => {
        assert.equal((await c.info(sha(small))).code, 0);
        const r = await c.read(sha(big), 0, 10);
        assert.ok(joined(r).equals(big.subarray(0, 10)));
      });
      assert.equal(n, 1);
    });
    await t.test('an offset past the end: OutOfRange, from the service', async () => {
      const n = await servedReads(async () => {
        assert.equal((await c.info(sha(small))).code, 0);
        const r = await c.read(sha(small), small.length + 1);
        assert.equal(r.code, grpc.status.OUT_OF_RANGE);
        assert.match(r.details, /read past object length 3000 bytes/);
      });
      assert.equal(n, 1);
    });
    await t.test('a Read in a namespace without the blob: NotFound', async () => {
      const n = await servedReads(async () => {
        assert.equal((await c.info(sha(small))).code, 0);
        const r = await c.read(sha(small), 0, 0, testNamespace('held-read-other'));
        assert.equal(r.code, grpc.status.NOT_FOUND);
      });
      assert.equal(n, 1);
    });
    await t.test('a Read more than a second after the Info', async () => {
      const n = await servedReads(async () => {
        assert.equal((await c.info(sha(small))).code, 0);
        await new Promise((r) => setTimeout(r, 1100));
        const r = await c.read(sha(small));
        assert.ok(joined(r).equals(small));
      });
      assert.equal(n, 1);
    });
    await t.test('a Read request that does not decode: InvalidArgument, from the service', async () => {
      const n = await servedReads(async () => {
        assert.equal((await c.info(sha(small))).code, 0);
        const r = await c.rawRead(Buffer.from([0x0a, 100, 0x61]));
        assert.equal(r.code, grpc.status.INVALID_ARGUMENT);
        assert.match(r.details, /^malformed Content\.Read request: /);
      });
      assert.equal(n, 1);
    });
    await t.test('an Info of a missing blob holds nothing', async () => {
      const n = await servedReads(async () => {
        assert.equal((await c.info(sha(small))).code, 0);
        const missing = sha(randomBytes(8));
        assert.equal((await c.info(missing)).code, grpc.status.NOT_FOUND);
        assert.equal((await c.read(missing)).code, grpc.status.NOT_FOUND);
      });
      assert.equal(n, 1);
    });
  } finally {
    c.close();
    other.close();
  }
});

test('an Info request that does not decode is InvalidArgument, as every malformed request', async () => {
  const c = new Conn();
  try {
    // Field 1 (digest) claims 100 bytes and brings 2.
    const r = await c.rawInfo(Buffer.from([0x0a, 100, 0x61, 0x62]));
    assert.equal(r.code, grpc.status.INVALID_ARGUMENT);
    assert.match(r.details, /^malformed Content\.Info request: /);
  } finally {
    c.close();
  }
});
