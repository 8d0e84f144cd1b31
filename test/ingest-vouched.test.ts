// The gateway hashes a client's Write stream to answer its pipelined WRITEs at once; it
// hands that digest to the content service with each step (WriteStep.digest), so the
// service stores the bytes without hashing them a second time. Direct links are off here,
// so every step crosses nats-server, where this test reads them: each pipelined WRITE and
// the COMMIT carry the digest of exactly the bytes before them, and what is committed,
// read back and refused is what containerd would commit, read back and refuse.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect, type NatsConnection } from 'nats';
import { flotillaContent, content as capi } from '@flotilla/api';
import { startStack, testNamespace, type Stack } from '@flotilla/testing';

let stack: Stack;
let monitor: NatsConnection;
const steps: flotillaContent.WriteStep[] = [];

before(async () => {
  stack = await startStack({ env: { FLOTILLA_DIRECT: 'off' } });
  monitor = await connect({ servers: stack.env.NATS_URL! });
  monitor.subscribe('flotilla.v1.inst.>', { callback: (_err, msg) => msg.subject.endsWith('.WriteNext') && steps.push(flotillaContent.WriteStep.decode(msg.data)) });
  await monitor.flush();
});

after(async () => {
  await monitor?.close();
  await stack?.stop();
});

const sha = (b: Uint8Array) => 'sha256:' + createHash('sha256').update(b).digest('hex');

test('pipelined WRITEs and the COMMIT carry the gateway\'s digest of the bytes before them', async (t) => {
  const namespace = testNamespace(t.name);
  const data = randomBytes(5 * 1024 * 1024 + 123);
  steps.length = 0;
  const ingest = await stack.ctr(['content', 'ingest', '--expected-size', String(data.length), '--expected-digest', sha(data), 'vouched-ref'], { namespace, input: data });
  assert.equal(ingest.code, 0, ingest.stderr);
  await monitor.flush();
  const writes = steps.filter((s) => s.request?.action === capi.WriteAction.WRITE && s.request.data.length > 0);
  assert.ok(writes.length >= 5, `${writes.length} WRITE steps`);
  for (const s of writes) {
    const end = s.request!.offset + s.request!.data.length;
    assert.equal(s.digestOffset, end, 'digest_offset is where the step ends');
    assert.equal(s.digest, sha(data.subarray(0, end)), `digest at ${end}`);
  }
  const commit = steps.find((s) => s.request?.action === capi.WriteAction.COMMIT);
  assert.ok(commit, 'a COMMIT step');
  assert.deepEqual([commit.digest, commit.digestOffset], [sha(data), data.length]);
  const got = await stack.ctr(['content', 'get', sha(data)], { namespace });
  assert.equal(got.code, 0, got.stderr);
  assert.ok(got.stdoutBytes.equals(data), 'content read back differs from what was written');
  const info = await stack.ctr(['content', 'ls', '-q'], { namespace });
  assert.match(info.stdout, new RegExp(sha(data)));
});

test('a wrong expected digest still fails at commit, committing nothing', async (t) => {
  const namespace = testNamespace(t.name);
  const data = randomBytes(3 * 1024 * 1024);
  const wrong = sha(Buffer.from('not the data'));
  steps.length = 0;
  const bad = await stack.ctr(['content', 'ingest', '--expected-digest', wrong, 'vouched-bad'], { namespace, input: data });
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, new RegExp(`unexpected commit digest ${sha(data)}, expected ${wrong}`));
  await monitor.flush();
  assert.ok(steps.some((s) => s.digest === sha(data)), 'the COMMIT was vouched for');
  const ls = await stack.ctr(['content', 'ls', '-q'], { namespace });
  assert.equal(ls.stdout.trim(), '');
});
