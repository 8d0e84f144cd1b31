import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildGoTest, runGoTest, startStack } from '@flotilla/testing';

test('a Go test built from Debian containerd sources reaches a flotilla gateway', async () => {
  const bin = await buildGoTest('smoke');
  const stack = await startStack();
  try {
    const r = await runGoTest(bin, [], { FLOTILLA_ADDRESS: stack.socket });
    assert.equal(r.code, 0, r.output);
    assert.deepEqual(r.passed.sort(), ['TestNamespaceSetTwice', 'TestVersion']);
    assert.match(r.output, /server version 1\.6\.20\+flotilla/);
    const none = await runGoTest(bin, [], { FLOTILLA_ADDRESS: '/nonexistent/containerd.sock' });
    assert.deepEqual(none.failed.sort(), ['TestNamespaceSetTwice', 'TestVersion']);
  } finally {
    await stack.stop();
  }
});
