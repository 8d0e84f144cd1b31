// Bulk bytes beside NATS, through the real ctr: on one host, content Write steps and the
// continuations of a content Read take the processes' direct links (no message on the
// instance-pinned subjects reaches nats-server), the gateway pipelines WRITE messages, and
// every byte and every commit check still holds. test/small-payload.test.ts runs the same
// traffic with direct links off.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import { connect, type NatsConnection } from 'nats';
import { CONNECTION_WINDOW, STREAM_WINDOW } from '@flotilla/gateway';
import { startStack, testNamespace, type Stack } from '@flotilla/testing';

let stack: Stack;
let monitor: NatsConnection;
const pinned = { inst: 0, stream: 0 };

before(async () => {
  stack = await startStack();
  monitor = await connect({ servers: stack.env.NATS_URL! });
  monitor.subscribe('flotilla.v1.inst.>', { callback: () => pinned.inst++ });
  monitor.subscribe('flotilla.v1.stream.>', { callback: () => pinned.stream++ });
  await monitor.flush();
});

after(async () => {
  await monitor?.close();
  await stack?.stop();
});

const sha = (b: Uint8Array) => 'sha256:' + createHash('sha256').update(b).digest('hex');

test('a 24 MiB ingest and its read back go over direct links and keep every byte', async (t) => {
  const namespace = testNamespace(t.name);
  const data = randomBytes(24 * 1024 * 1024 + 777);
  pinned.inst = 0;
  pinned.stream = 0;
  const ingest = await stack.ctr(['content', 'ingest', '--expected-size', String(data.length), '--expected-digest', sha(data), 'direct-ref'], { namespace, input: data });
  assert.equal(ingest.code, 0, ingest.stderr);
  const got = await stack.ctr(['content', 'get', sha(data)], { namespace });
  assert.equal(got.code, 0, got.stderr);
  assert.ok(got.stdoutBytes.equals(data), 'content read back differs from what was written');
  await monitor.flush();
  assert.equal(pinned.inst, 0, 'Write steps crossed nats-server');
  assert.equal(pinned.stream, 0, 'Read continuations crossed nats-server');
});

test('pipelined writes still fail at commit on a wrong digest, committing nothing', async (t) => {
  const namespace = testNamespace(t.name);
  const data = randomBytes(6 * 1024 * 1024);
  const digest = await stack.ctr(['content', 'ingest', '--expected-size', String(data.length), '--expected-digest', sha(Buffer.from('other')), 'bad-digest'], { namespace, input: data });
  assert.notEqual(digest.code, 0);
  assert.match(digest.stderr, new RegExp(`unexpected commit digest ${sha(data)}, expected ${sha(Buffer.from('other'))}: failed precondition`));
  const ls = await stack.ctr(['content', 'ls', '-q'], { namespace });
  assert.equal(ls.code, 0, ls.stderr);
  assert.equal(ls.stdout.trim(), '', 'nothing was committed');
  // The same bytes then ingest fine under a new ref.
  const ok = await stack.ctr(['content', 'ingest', '--expected-size', String(data.length), '--expected-digest', sha(data), 'good'], { namespace, input: data });
  assert.equal(ok.code, 0, ok.stderr);
});

test('the gateway offers wide HTTP/2 receive windows, so a 1 MiB message does not wait for window updates', async () => {
  assert.ok(STREAM_WINDOW >= 1 << 20 && CONNECTION_WINDOW >= STREAM_WINDOW);
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(stack.socket) });
  try {
    const settings = await new Promise<http2.Settings>((resolve, reject) => {
      session.once('remoteSettings', resolve);
      session.once('error', reject);
    });
    assert.equal(settings.initialWindowSize, STREAM_WINDOW);
    // The connection window is raised by a WINDOW_UPDATE sent with the settings; a ping's
    // answer comes after it.
    await new Promise<void>((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));
    assert.equal(session.state.remoteWindowSize, CONNECTION_WINDOW);
  } finally {
    session.destroy();
  }
});
