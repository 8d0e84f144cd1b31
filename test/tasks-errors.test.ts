// Task errors as containerd gives them: the same ctr task commands against Debian's
// containerd (private socket) and against flotilla must fail with the same text, which
// carries containerd's error class. Both runc shims keep container state under the same
// default root (/run/containerd/runc/<namespace>), so the two sides use different
// namespaces and flotilla's is written as the reference's before comparing.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { buildBusyboxImage, startReferenceContainerd, startStack, testNamespace, type CtrOptions, type CtrResult, type Reference, type Stack, type TestImage } from '@flotilla/testing';

let stack: Stack;
let ref: Reference;
let image: TestImage;

before(async () => {
  image = await buildBusyboxImage();
  ref = await startReferenceContainerd();
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
  await ref?.stop();
});

function normalize(r: CtrResult, ns: string, as: string): { code: number; stderr: string } {
  return { code: r.code, stderr: r.stderr.replace(/time="[^"]*"/g, 'time=T').replaceAll(ns, as).trim() };
}

const ours = (o: CtrOptions): CtrOptions => ({ ...o, namespace: `${o.namespace}-fl` });

async function same(args: string[], opts: CtrOptions): Promise<string> {
  const want = normalize(await ref.ctr(args, opts), '', '');
  const got = normalize(await stack.ctr(args, ours(opts)), ours(opts).namespace!, opts.namespace!);
  assert.notEqual(want.code, 0, `reference accepted ctr ${args.join(' ')}`);
  assert.deepEqual(got, want, `ctr ${args.join(' ')}`);
  return got.stderr;
}

const sides = [(a: string[], o: CtrOptions) => ref.ctr(a, o), (a: string[], o: CtrOptions) => stack.ctr(a, ours(o))];

async function both(args: string[], opts: CtrOptions): Promise<void> {
  for (const side of sides) {
    const r = await side(args, opts);
    assert.equal(r.code, 0, `ctr ${args.join(' ')}: ${r.stderr}`);
  }
}

test('task errors match containerd', async (t) => {
  const ns = testNamespace(t.name);
  const o = { namespace: ns };
  await both(['images', 'import', image.archivePath], o);
  await both(['run', '-d', image.name, 't1', '/bin/sleep', '100000'], o);
  await both(['containers', 'create', image.name, 'notask'], o);
  await both(['tasks', 'exec', '-d', '--exec-id', 'dup', 't1', '/bin/sleep', '100000'], o);

  assert.match(await same(['tasks', 'start', 't1'], o), /already exists/);
  assert.match(await same(['tasks', 'kill', 'notask'], o), /no running task found: task notask not found: not found/);
  await same(['tasks', 'ps', 'notask'], o);
  await same(['tasks', 'pause', 'notask'], o);
  await same(['tasks', 'metrics', 'notask'], o);
  await same(['tasks', 'rm', 'notask'], o);
  assert.match(await same(['tasks', 'rm', 't1'], o), /failed precondition/);
  assert.match(await same(['tasks', 'exec', '--exec-id', 'dup', 't1', '/bin/true'], o), /already exists/);
  await same(['tasks', 'exec', '--exec-id', 'nofile', 't1', '/no/such/binary'], o);
  await same(['tasks', 'kill', '--exec-id', 'nope', 't1'], o);
  await same(['tasks', 'resume', 't1'], o);
  await both(['tasks', 'pause', 't1'], o);
  await same(['tasks', 'pause', 't1'], o);
  await both(['tasks', 'resume', 't1'], o);
  await both(['tasks', 'kill', '-a', '-s', 'SIGKILL', 't1'], o);
  // Stopped: killing again and exec are refused the same way.
  for (const side of sides) {
    for (let i = 0; i < 200; i++) {
      const ls = await side(['tasks', 'ls'], o);
      if (/t1\s+\d+\s+STOPPED/.test(ls.stdout)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  await same(['tasks', 'exec', '--exec-id', 'late', 't1', '/bin/true'], o);
  await same(['tasks', 'pause', 't1'], o);
  for (const side of sides) {
    await side(['tasks', 'rm', 't1'], o);
    await side(['containers', 'rm', 't1', 'notask'], o);
  }
});
