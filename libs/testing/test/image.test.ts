// The test image against Debian's containerd (the reference, on a private root and socket):
// ctr imports it under its name and runs busybox applets from it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { buildBusyboxImage, startReferenceContainerd, testNamespace, type Reference } from '@flotilla/testing';

const execFileP = promisify(execFile);
let ref: Reference;
let tmp: string;

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-image-test-'));
  ref = await startReferenceContainerd();
});

after(async () => {
  await ref?.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

test('buildBusyboxImage: an OCI layout archive, cached, copied into dir when given', async () => {
  const a = await buildBusyboxImage();
  const b = await buildBusyboxImage(tmp, { name: 'flotilla.test/other:v1' });
  const c = await buildBusyboxImage(tmp, { name: 'flotilla.test/other:v1' });
  assert.equal(a.name, 'flotilla.test/busybox:latest');
  assert.equal(b.name, 'flotilla.test/other:v1');
  assert.equal(path.dirname(b.archivePath), tmp);
  assert.equal(c.manifestDigest, b.manifestDigest, 'second build comes from the cache');
  assert.equal((await buildBusyboxImage()).manifestDigest, a.manifestDigest);
  const { stdout } = await execFileP('tar', ['-tf', a.archivePath]);
  const entries = stdout.split('\n').filter(Boolean).map((e) => e.replace(/^\.\//, ''));
  for (const want of ['oci-layout', 'index.json', `blobs/sha256/${a.manifestDigest.slice(7)}`, `blobs/sha256/${a.layerDigest.slice(7)}`]) {
    assert.ok(entries.includes(want), `${want} missing from ${entries.join(' ')}`);
  }
  const { stdout: index } = await execFileP('tar', ['-xOf', a.archivePath, 'index.json']);
  const m = JSON.parse(index).manifests;
  assert.equal(m.length, 1);
  assert.equal(m[0].digest, a.manifestDigest);
  assert.equal(m[0].annotations['io.containerd.image.name'], a.name);
  assert.equal(m[0].annotations['org.opencontainers.image.ref.name'], 'latest');
});

test('the reference containerd imports the image under its name and runs it', async () => {
  const img = await buildBusyboxImage(tmp);
  const ns = testNamespace('the reference containerd imports the image');
  const imp = await ref.ctr(['images', 'import', img.archivePath], { namespace: ns });
  assert.equal(imp.code, 0, imp.stderr);
  const ls = await ref.ctr(['images', 'ls'], { namespace: ns });
  assert.equal(ls.code, 0, ls.stderr);
  const row = ls.stdout.split('\n').find((l) => l.startsWith(img.name + ' '));
  assert.ok(row, ls.stdout);
  assert.ok(row.includes(img.manifestDigest), row);
  const snaps = await ref.ctr(['snapshots', 'ls'], { namespace: ns });
  assert.match(snaps.stdout, new RegExp(`^${img.diffId}\\s+Committed`, 'm'));
  const run = await ref.ctr(['run', '--rm', img.name, 'echo1', '/bin/sh', '-c', 'echo hello from $(id -u); ls /bin/sleep'], { namespace: ns });
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout, 'hello from 0\n/bin/sleep\n');
  const fail = await ref.ctr(['run', '--rm', img.name, 'exit3', '/bin/sh', '-c', 'exit 3'], { namespace: ns });
  assert.equal(fail.code, 3);
});

test('stop of the reference kills what a test left running', async () => {
  const other = await startReferenceContainerd();
  const img = await buildBusyboxImage();
  const ns = testNamespace('left running');
  assert.equal((await other.ctr(['images', 'import', img.archivePath], { namespace: ns })).code, 0);
  const r = await other.ctr(['run', '-d', img.name, 'sleeper', '/bin/sleep', '1000'], { namespace: ns });
  assert.equal(r.code, 0, r.stderr);
  const pid = Number((await other.ctr(['tasks', 'ls'], { namespace: ns })).stdout.match(/sleeper\s+(\d+)/)?.[1]);
  assert.ok(pid > 0);
  await other.stop();
  await assert.rejects(fs.stat(`/proc/${pid}`), { code: 'ENOENT' });
  await assert.rejects(fs.stat(other.socket), { code: 'ENOENT' });
});
