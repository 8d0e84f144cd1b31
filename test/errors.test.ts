// Errors as containerd gives them: the same commands through the real ctr against Debian's
// containerd (private socket) and against flotilla must fail the same way. ctr prints the
// error's text, which carries containerd's error class ("not found", "already exists", ...)
// and is what clients branch on after the gRPC code; so stderr is compared after removing
// what legitimately differs (timestamps, temp paths).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildBusyboxImage, startReferenceContainerd, startStack, testNamespace, type Reference, type Stack, type TestImage } from '@flotilla/testing';
import type { CtrOptions, CtrResult } from '@flotilla/testing';

let stack: Stack;
let ref: Reference;
let image: TestImage;
let dir: string;

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-errors-'));
  image = await buildBusyboxImage();
  ref = await startReferenceContainerd();
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
  await ref?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

function normalize(r: CtrResult): { code: number; stderr: string } {
  const stderr = r.stderr
    .replace(/time="[^"]*"/g, 'time=T')
    .replaceAll(dir, '<dir>')
    .trim();
  return { code: r.code, stderr };
}

/** Runs the same ctr command on both sides; asserts it failed identically and returns it. */
async function same(args: string[], opts: CtrOptions = {}): Promise<string> {
  const want = normalize(await ref.ctr(args, opts));
  const got = normalize(await stack.ctr(args, opts));
  assert.notEqual(want.code, 0, `reference accepted ctr ${args.join(' ')}`);
  assert.deepEqual(got, want, `ctr ${args.join(' ')}`);
  return got.stderr;
}

test('importing a garbage archive fails as with containerd', async (t) => {
  const ns = testNamespace(t.name);
  const garbage = path.join(dir, 'garbage.tar');
  await fs.writeFile(garbage, Buffer.from('this is not a tar archive\n'.repeat(100)));
  await same(['images', 'import', garbage], { namespace: ns });
});

test('running an unknown image is NotFound', async (t) => {
  const ns = testNamespace(t.name);
  const err = await same(['run', '--rm', 'docker.io/library/nothing-here:latest', 'c1', '/bin/true'], { namespace: ns });
  assert.match(err, /not found/);
});

test('creating a container id twice is AlreadyExists', async (t) => {
  const ns = testNamespace(t.name);
  for (const side of [ref.ctr, stack.ctr]) {
    const imp = await side(['images', 'import', image.archivePath], { namespace: ns });
    assert.equal(imp.code, 0, imp.stderr);
    const first = await side(['containers', 'create', image.name, 'twice'], { namespace: ns });
    assert.equal(first.code, 0, first.stderr);
  }
  const err = await same(['containers', 'create', image.name, 'twice'], { namespace: ns });
  assert.match(err, /already exists/);
  for (const side of [ref.ctr, stack.ctr]) await side(['containers', 'rm', 'twice'], { namespace: ns });
});

test('an invalid namespace name is InvalidArgument', async () => {
  const err = await same(['images', 'ls'], { namespace: 'bad!' });
  assert.match(err, /invalid argument/);
  await same(['namespaces', 'create', 'bad..name']);
});

test('unknown content, snapshot and task are NotFound', async (t) => {
  const ns = testNamespace(t.name);
  await same(['content', 'get', `sha256:${'0'.repeat(64)}`], { namespace: ns });
  await same(['snapshots', 'info', 'no-such-key'], { namespace: ns });
  await same(['tasks', 'kill', 'no-such-task'], { namespace: ns });
  await same(['containers', 'info', 'no-such-container'], { namespace: ns });
  await same(['containers', 'rm', 'no-such-container'], { namespace: ns });
});
