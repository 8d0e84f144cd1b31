// The stack runs nats-server with max_payload 8 MiB, so ctr's 1 MiB messages cross the bus
// whole. With FLOTILLA_MAX_PAYLOAD lowered to 64 KiB, every Write message is cut by the
// gateway into many WRITE steps and every Read reply into many records: this keeps those
// paths tested through the real ctr. Direct links are off (FLOTILLA_DIRECT=off), so every
// Write step and stream batch crosses nats-server, as between processes on different hosts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { startStack, testNamespace, type Stack } from '@flotilla/testing';

let stack: Stack;

before(async () => {
  stack = await startStack({ env: { FLOTILLA_MAX_PAYLOAD: String(64 * 1024), FLOTILLA_DIRECT: 'off' } });
});

after(async () => {
  await stack?.stop();
});

test('a 3 MiB ingest and read back through a 64 KiB-payload bus keep every byte', async (t) => {
  const namespace = testNamespace(t.name);
  const data = randomBytes(3 * 1024 * 1024 + 12345);
  const dgst = 'sha256:' + createHash('sha256').update(data).digest('hex');
  const ingest = await stack.ctr(['content', 'ingest', '--expected-size', String(data.length), '--expected-digest', dgst, 'small-payload-ref'], { namespace, input: data });
  assert.equal(ingest.code, 0, ingest.stderr);
  const got = await stack.ctr(['content', 'get', dgst], { namespace });
  assert.equal(got.code, 0, got.stderr);
  assert.equal(got.stdoutBytes.length, data.length);
  assert.ok(got.stdoutBytes.equals(data), 'content read back differs from what was written');
  // A wrong expected digest still fails at commit, after the cut steps.
  const other = randomBytes(200 * 1024);
  const wrong = 'sha256:' + createHash('sha256').update('not the data').digest('hex');
  const bad = await stack.ctr(['content', 'ingest', '--expected-digest', wrong, 'small-payload-bad'], { namespace, input: other });
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /unexpected commit digest/);
});
