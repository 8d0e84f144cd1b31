// Images through the real ctr, compared with Debian's containerd 1.6.20 (private socket):
// import, ls (with filters), label, check, export, rm and their errors print the same;
// exporting what was imported gives the same bytes as containerd's export, and importing
// that export again exports identically.
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
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-images-'));
  image = await buildBusyboxImage();
  ref = await startReferenceContainerd();
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
  await ref?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

const norm = (r: CtrResult) => ({
  code: r.code,
  stdout: r.stdout.replaceAll(dir, '<dir>'),
  stderr: r.stderr.replace(/time="[^"]*"/g, 'time=T').replaceAll(dir, '<dir>').trim(),
});

/** `ctr images label` prints the labels in Go's (random) map order: compare them as a set. */
const sortLabels = (r: { code: number; stdout: string; stderr: string }) => ({
  ...r,
  stdout: r.stdout.split('\n').map((l) => l.split(',').sort().join(',')).join('\n'),
});

/** The same ctr command on both sides: same exit code, stdout and stderr. */
async function same(args: string[], opts: CtrOptions = {}): Promise<CtrResult> {
  const want = await ref.ctr(args, opts);
  const got = await stack.ctr(args, opts);
  const n = args[1] === 'label' ? (r: CtrResult) => sortLabels(norm(r)) : norm;
  assert.deepEqual(n(got), n(want), `ctr ${args.join(' ')}`);
  return got;
}

async function ok(side: { ctr: Stack['ctr'] }, args: string[], opts: CtrOptions = {}): Promise<CtrResult> {
  const r = await side.ctr(args, opts);
  assert.equal(r.code, 0, `ctr ${args.join(' ')}: ${r.stderr}`);
  return r;
}

test('import, ls, label, check and rm print what containerd prints', async (t) => {
  const namespace = testNamespace(t.name);
  const o = { namespace };
  await same(['images', 'import', image.archivePath], o);
  await same(['images', 'ls'], o);
  await same(['images', 'check'], o);
  await same(['images', 'tag', image.name, 'flotilla.test/other:1'], o);
  await same(['images', 'label', image.name, 'team=blue', 'tier=db'], o);
  await same(['images', 'label', 'flotilla.test/other:1', 'team=red'], o);
  await same(['images', 'ls'], o);
  // Filters: name, labels, target fields; several filters are OR-ed; a bad one is InvalidArgument.
  for (const f of [
    [`name==${image.name}`], ['labels.team==red'], ['labels.team'], ['labels.team~=^b'], ['labels.team!=blue'],
    [`target.digest==${image.manifestDigest}`], ['target.mediatype==application/vnd.oci.image.manifest.v1+json'],
    ['name~=other', 'labels.tier==db'], ['name==nothing'], ['labels.team==blue,labels.tier==db'], ['labels.'],
  ]) {
    await same(['images', 'ls', '-q', ...f], o);
  }
  // Removing a label (empty value) and a missing image.
  await same(['images', 'label', image.name, 'tier='], o);
  await same(['images', 'ls'], o);
  await same(['images', 'label', 'flotilla.test/nothing:1', 'a=b'], o);
  await same(['images', 'rm', 'flotilla.test/nothing:1'], o);
  await same(['images', 'rm', 'flotilla.test/other:1'], o);
  await same(['images', 'ls', '-q'], o);
  await same(['images', 'rm', '--sync', image.name], o);
  await same(['images', 'ls'], o);
});

test('export is byte-identical to containerd export, and survives import again', async (t) => {
  const namespace = testNamespace(t.name);
  const o = { namespace };
  await ok(ref, ['images', 'import', image.archivePath], o);
  await ok(stack, ['images', 'import', image.archivePath], o);
  const want = path.join(dir, 'ref.tar');
  const got = path.join(dir, 'flotilla.tar');
  await ok(ref, ['images', 'export', want, image.name], o);
  await ok(stack, ['images', 'export', got, image.name], o);
  assert.ok((await fs.readFile(got)).equals(await fs.readFile(want)), 'flotilla export differs from containerd export');

  // Export -> import into a fresh namespace -> export: the same bytes again.
  const o2 = { namespace: testNamespace(`${t.name} again`) };
  await ok(stack, ['images', 'import', got], o2);
  const again = path.join(dir, 'again.tar');
  await ok(stack, ['images', 'export', again, image.name], o2);
  assert.ok((await fs.readFile(again)).equals(await fs.readFile(got)), 'export of the re-imported image differs');
  await same(['images', 'check'], o2).catch(async () => {
    // The reference never imported into o2; compare check output with its first namespace instead.
    const a = (await ok(ref, ['images', 'check'], o)).stdout;
    const b = (await ok(stack, ['images', 'check'], o2)).stdout;
    assert.equal(b, a);
  });
});
