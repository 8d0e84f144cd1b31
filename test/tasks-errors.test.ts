// Task errors as containerd gives them: the same ctr task commands against Debian's
// containerd (private socket) and against flotilla must fail with the same text, which
// carries containerd's error class. Both runc shims keep container state under the same
// default root (/run/containerd/runc/<namespace>), so the two sides use different
// namespaces and flotilla's is written as the reference's before comparing.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
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

test('ctr events shows the topics containerd shows for a container run', async (t) => {
  const ns = testNamespace(t.name);
  const o = { namespace: ns };
  await both(['images', 'import', image.archivePath], o);
  const watch = (socket: string, namespace: string) => {
    const child = spawn('ctr', ['--address', socket, 'events', `namespace==${namespace}`], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    return { topics: () => [...out.matchAll(/ (\/[a-z/-]+) /g)].map((m) => m[1]!), stop: () => child.kill('SIGKILL') };
  };
  const sides = [
    { w: watch(ref.socket, ns), ctr: (a: string[]) => ref.ctr(a, o) },
    { w: watch(stack.socket, ours(o).namespace!), ctr: (a: string[]) => stack.ctr(a, ours(o)) },
  ];
  t.after(() => sides.forEach((s) => s.w.stop()));
  for (const s of sides) {
    // Live once a namespace update made after subscribing comes back.
    for (let i = 0; i < 100 && !s.w.topics().includes('/namespaces/update'); i++) {
      await s.ctr(['namespaces', 'label', s === sides[0] ? ns : ours(o).namespace!, `probe=${i}`]);
      await new Promise((r) => setTimeout(r, 100));
    }
    const run = await s.ctr(['run', '--rm', image.name, 'ev', '/bin/sh', '-c', 'exit 2']);
    assert.equal(run.code, 2, run.stderr);
    const p = await s.ctr(['run', '-d', image.name, 'ev2', '/bin/sleep', '1000']);
    assert.equal(p.code, 0, p.stderr);
    for (const args of [['tasks', 'exec', '--exec-id', 'x', 'ev2', '/bin/true'], ['tasks', 'pause', 'ev2'], ['tasks', 'resume', 'ev2'], ['tasks', 'kill', '-s', 'SIGKILL', 'ev2']]) {
      const r = await s.ctr(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    }
    for (let i = 0; i < 100 && !s.w.topics().includes('/tasks/exit'); i++) await new Promise((r) => setTimeout(r, 100));
    await s.ctr(['tasks', 'rm', 'ev2']);
    await s.ctr(['containers', 'rm', 'ev2']);
  }
  const settled = async (s: (typeof sides)[number]) => {
    for (let i = 0; i < 100 && s.w.topics().filter((x) => x === '/containers/delete').length < 2; i++) await new Promise((r) => setTimeout(r, 100));
    // Content collection by the GC runs on its own schedule (not this test's subject).
    return s.w.topics().filter((x) => /^\/(tasks|containers|snapshot)\//.test(x));
  };
  const want = await settled(sides[0]!);
  const got = await settled(sides[1]!);
  assert.ok(want.includes('/tasks/exec-started') && want.includes('/tasks/paused'), want.join(' '));
  assert.deepEqual(got, want);
});
