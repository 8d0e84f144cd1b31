// Leases through the real ctr, compared with Debian's containerd 1.6.20: create (with an
// id, labels and the default 24 h expiry), ls (with filters), rm (also --sync) and their
// errors print the same, timestamps aside.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startReferenceContainerd, startStack, testNamespace, type Reference, type Stack } from '@flotilla/testing';
import type { CtrOptions, CtrResult } from '@flotilla/testing';

let stack: Stack;
let ref: Reference;

before(async () => {
  ref = await startReferenceContainerd();
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
  await ref?.stop();
});

// ls prints the creation time; the expiry label is creation time + 24 h.
const RFC3339 = /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)/g;
const norm = (r: CtrResult) => ({
  code: r.code,
  stdout: r.stdout.replace(RFC3339, '<time>'),
  stderr: r.stderr.replace(/time="[^"]*"/g, 'time=T').trim(),
});

async function same(args: string[], opts: CtrOptions = {}): Promise<CtrResult> {
  const want = await ref.ctr(args, opts);
  const got = await stack.ctr(args, opts);
  assert.deepEqual(norm(got), norm(want), `ctr ${args.join(' ')}`);
  return got;
}

test('leases create, ls and rm print what containerd prints', async (t) => {
  const o = { namespace: testNamespace(t.name) };
  await same(['leases', 'ls'], o);
  await same(['leases', 'create', '--id', 'one', 'team=blue', 'empty='], o);
  await same(['leases', 'create', '--id', 'two', '--expires', '0', 'team=red'], o);
  await same(['leases', 'create', '--id', 'three', '--expires', '1h'], o);
  await same(['leases', 'create', '--id', 'one'], o);
  await same(['leases', 'ls'], o);
  for (const f of [['id==one'], ['labels.team==red'], ['labels.team'], ['id~=^t', 'labels.team==blue'], ['labels."containerd.io/gc.expire"'], ['id=='], ['id!=two']]) {
    await same(['leases', 'ls', '-q', ...f], o);
  }
  await same(['leases', 'rm', 'one'], o);
  await same(['leases', 'rm', 'nothing'], o);
  await same(['leases', 'rm', '--sync', 'two', 'three'], o);
  await same(['leases', 'ls'], o);
});

test('a lease without an id gets a generated one, as containerd names them', async (t) => {
  const o = { namespace: testNamespace(t.name) };
  const want = await ref.ctr(['leases', 'create'], o);
  const got = await stack.ctr(['leases', 'create'], o);
  assert.equal(got.code, 0, got.stderr);
  const shape = /^\d{1,9}-[A-Za-z0-9_-]{4}\n$/;
  assert.match(want.stdout, shape);
  assert.match(got.stdout, shape);
  const ls = await stack.ctr(['leases', 'ls', '-q'], o);
  assert.equal(ls.stdout, got.stdout);
});
