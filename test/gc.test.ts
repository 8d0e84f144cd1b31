// Garbage collection against a whole stack, and where ctr can show it, against Debian's
// containerd doing the same: what leases, images, labels and containers hold stays; what
// nothing holds any more is removed by its owner (content service, node snapshotter).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { leases as lapi } from '@flotilla/api';
import { Bus, rpcClient, serviceSubject } from '@flotilla/bus';
import { buildBusyboxImage, startReferenceContainerd, startStack, testNamespace, type Reference, type Stack, type TestImage } from '@flotilla/testing';
import type { CtrOptions, CtrResult } from '@flotilla/testing';

let stack: Stack;
let ref: Reference;
let image: TestImage;
let bus: Bus;

before(async () => {
  image = await buildBusyboxImage();
  ref = await startReferenceContainerd();
  stack = await startStack();
  bus = await Bus.connect({ url: stack.env.NATS_URL!, name: 'gc-test' });
});

after(async () => {
  await bus?.close();
  await stack?.stop();
  await ref?.stop();
});

async function ok(side: { ctr(args: string[], o?: CtrOptions): Promise<CtrResult> }, args: string[], o: CtrOptions = {}): Promise<string> {
  const r = await side.ctr(args, o);
  assert.equal(r.code, 0, `ctr ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const lines = (s: string) => s.split('\n').filter(Boolean).sort();
const sha = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

/** Waits (up to 60 s) until `fn` returns the same value twice in a row and it satisfies `done`. */
async function settle<T>(fn: () => Promise<T>, done: (v: T) => boolean): Promise<T> {
  const until = Date.now() + 60_000;
  let last: string | undefined;
  for (;;) {
    const v = await fn();
    const s = JSON.stringify(v);
    if (done(v) && s === last) return v;
    last = s;
    if (Date.now() > until) return v;
    await new Promise((r) => setTimeout(r, 500));
  }
}

test('a blob held only by a deleted lease is removed; one an image references stays', async (t) => {
  const namespace = testNamespace(t.name);
  const o = { namespace };
  await ok(stack, ['images', 'import', image.archivePath], o);
  const leased = Buffer.from(`held by a lease in ${namespace}\n`);
  await ok(stack, ['content', 'ingest', 'leased-ref'], { ...o, input: leased });
  await ok(stack, ['leases', 'create', '--id', 'holder'], o);
  const leases = rpcClient(bus, lapi.LeasesDefinition, (m) => serviceSubject('leases', m));
  await leases.addResource({ id: 'holder', resource: { id: sha(leased), type: 'content' } }, { namespace });
  await leases.addResource({ id: 'holder', resource: { id: image.layerDigest, type: 'content' } }, { namespace });

  // While the lease exists, a collection keeps the blob.
  await ok(stack, ['leases', 'create', '--id', 'trigger'], o);
  await ok(stack, ['leases', 'rm', '--sync', 'trigger'], o);
  assert.ok(lines(await ok(stack, ['content', 'ls', '-q'], o)).includes(sha(leased)));

  await ok(stack, ['leases', 'rm', '--sync', 'holder'], o);
  const left = lines(await ok(stack, ['content', 'ls', '-q'], o));
  assert.ok(!left.includes(sha(leased)), 'the blob of the deleted lease is still listed');
  const get = await stack.ctr(['content', 'get', sha(leased)], o);
  assert.notEqual(get.code, 0);
  assert.match(get.stderr, /not found/);
  // The image's manifest, config and layer (also in the deleted lease) stay.
  for (const d of [image.manifestDigest, image.configDigest, image.layerDigest]) assert.ok(left.includes(d), `${d} was collected`);
});

test('after import the archive index blob is collected as containerd collects it', async (t) => {
  const o = { namespace: testNamespace(t.name) };
  await ok(ref, ['images', 'import', image.archivePath], o);
  await ok(stack, ['images', 'import', image.archivePath], o);
  const want = await settle(async () => lines(await ok(ref, ['content', 'ls', '-q'], o)), (v) => v.length === 3);
  assert.deepEqual(want, [image.manifestDigest, image.configDigest, image.layerDigest].sort());
  const got = await settle(async () => lines(await ok(stack, ['content', 'ls', '-q'], o)), (v) => v.length === 3);
  assert.deepEqual(got, want);

  // Deleting the image with --sync leaves what containerd leaves: nothing.
  await ok(ref, ['images', 'rm', '--sync', image.name], o);
  await ok(stack, ['images', 'rm', '--sync', image.name], o);
  assert.deepEqual(lines(await ok(stack, ['content', 'ls', '-q'], o)), lines(await ok(ref, ['content', 'ls', '-q'], o)));
  assert.deepEqual(lines(await ok(stack, ['content', 'ls', '-q'], o)), []);
  // The unpacked snapshot went with it on both.
  assert.equal((await ok(stack, ['snapshots', 'ls'], o)).trim(), (await ok(ref, ['snapshots', 'ls'], o)).trim());
});

test('gc.root and gc.ref.content labels hold content; expired leases are removed', async (t) => {
  const o = { namespace: testNamespace(t.name) };
  for (const side of [ref, stack]) {
    const root = Buffer.from('root blob\n');
    const child = Buffer.from('child blob\n');
    const loose = Buffer.from('loose blob\n');
    for (const [name, b] of [['root', root], ['child', child], ['loose', loose]] as const) await ok(side, ['content', 'ingest', name], { ...o, input: b });
    await ok(side, ['content', 'label', sha(root), 'containerd.io/gc.root=yes', `containerd.io/gc.ref.content.c=${sha(child)}`], o);
    await ok(side, ['leases', 'create', '--id', 'short', '--expires', '1s'], o);
  }
  await new Promise((r) => setTimeout(r, 1500));
  const results: { content: string[]; leases: string[] }[] = [];
  for (const side of [ref, stack]) {
    // A synchronous collection (deleting a lease with --sync) on each side.
    await ok(side, ['leases', 'create', '--id', 'trigger'], o);
    await ok(side, ['leases', 'rm', '--sync', 'trigger'], o);
    results.push({ content: lines(await ok(side, ['content', 'ls', '-q'], o)), leases: lines(await ok(side, ['leases', 'ls', '-q'], o)) });
  }
  const [want, got] = results as [typeof results[0], typeof results[0]];
  assert.deepEqual(want.leases, []);
  assert.ok(want.content.includes(sha(Buffer.from('root blob\n'))) && want.content.includes(sha(Buffer.from('child blob\n'))));
  assert.deepEqual(got.leases, want.leases);
  // containerd collects the loose blob at once; flotilla keeps blobs younger than its grace
  // period unless a deletion released them, so compare what is held.
  assert.ok(got.content.includes(sha(Buffer.from('root blob\n'))) && got.content.includes(sha(Buffer.from('child blob\n'))));
});

test('a running container keeps its snapshots after its image is deleted; deleting it frees them', async (t) => {
  const o = { namespace: testNamespace(t.name) };
  // Both daemons' shims use runc's default root, so the ids differ (same length: ls pads columns).
  const sides = [{ side: ref, id: 'busy-ref' }, { side: stack, id: 'busy-flo' }] as const;
  const snaps = async (i: 0 | 1) => (await ok(sides[i].side, ['snapshots', 'ls'], o)).replace(sides[i].id, '<id>');
  for (const { side, id } of sides) {
    await ok(side, ['images', 'import', image.archivePath], o);
    await ok(side, ['run', '-d', image.name, id, '/bin/sleep', '600'], o);
    await ok(side, ['images', 'rm', '--sync', image.name], o);
  }
  // Same content and snapshots left on both: the container's snapshot chain stays.
  const snapsWant = await snaps(0);
  assert.match(snapsWant, /<id>/);
  assert.equal(await snaps(1), snapsWant);
  assert.deepEqual(lines(await ok(stack, ['content', 'ls', '-q'], o)), lines(await ok(ref, ['content', 'ls', '-q'], o)));
  // The task still runs on its root filesystem.
  const exec = await stack.ctr(['tasks', 'exec', '--exec-id', 'e1', 'busy-flo', '/bin/ls', '/bin/sleep'], o);
  assert.equal(exec.code, 0, exec.stderr);
  assert.equal(exec.stdout.trim(), '/bin/sleep');

  for (const { side, id } of sides) {
    await ok(side, ['tasks', 'kill', '-s', 'SIGKILL', id], o);
    await settle(async () => (await side.ctr(['tasks', 'delete', id], o)).stderr, (v) => /not found/.test(v));
    await ok(side, ['containers', 'rm', id], o);
  }
  const want = await settle(() => snaps(0), (v) => v.trim().split('\n').length === 1);
  const got = await settle(() => snaps(1), (v) => v === want);
  assert.equal(got, want);
});
