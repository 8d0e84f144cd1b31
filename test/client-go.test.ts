// Our Go client cases (tools/gotest/src/flotilla/client): containerd 1.6.20's own Go client,
// built from Debian's sources, against a whole flotilla stack.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { buildBusyboxImage, buildGoTest, runGoTest, startStack, type Stack, type TestImage } from '@flotilla/testing';

let stack: Stack;
let image: TestImage;
let bin: string;

before(async () => {
  [image, bin] = await Promise.all([buildBusyboxImage(), buildGoTest('client')]);
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
});

const CASES = ['TestImportAndUnpack', 'TestRunWithOutput', 'TestExec', 'TestPauseResumeKill', 'TestUpdateAndMetrics', 'TestEvents', 'TestPublishForward', 'TestLeaseProtectedContent'];

test('the containerd Go client imports, runs, execs, pauses, kills, updates, measures, subscribes and leases', async () => {
  const r = await runGoTest(bin, [], { FLOTILLA_ADDRESS: stack.socket, FLOTILLA_IMAGE_ARCHIVE: image.archivePath, FLOTILLA_IMAGE_NAME: image.name }, 10 * 60_000);
  assert.deepEqual(r.failed, [], r.output);
  assert.deepEqual(r.passed.sort(), [...CASES].sort(), r.output);
  assert.equal(r.code, 0, r.output);
});
