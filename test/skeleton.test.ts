// The walking skeleton, proven with the real ctr from Debian's containerd 1.6.20 against a
// full flotilla stack (nats-server, PostgreSQL, eight processes, the runc shim).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { APPS } from '@flotilla/launcher';
import { buildBusyboxImage, startStack, type Stack, type TestImage } from '@flotilla/testing';

let stack: Stack;
let image: TestImage;

before(async () => {
  image = await buildBusyboxImage();
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
});

async function ok(args: string[], opts?: { namespace?: string }) {
  const r = await stack.ctr(args, opts);
  assert.equal(r.code, 0, `ctr ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

test('ctr version shows the server; plugins ls lists the running services', async () => {
  const v = await ok(['version']);
  assert.match(v, /Server:\s+Version:\s+1\.6\.20\+flotilla/);
  const plugins = await ok(['plugins', 'ls']);
  for (const p of [/io\.containerd\.content\.v1\s+content/, /io\.containerd\.snapshotter\.v1\s+overlayfs/, /io\.containerd\.snapshotter\.v1\s+native/, /io\.containerd\.metadata\.v1\s+bolt/, /io\.containerd\.runtime\.v2\s+task/, /io\.containerd\.grpc\.v1\s+tasks/]) {
    assert.match(plugins, p);
  }
});

test('import shows the image, its blobs and its committed layer', async () => {
  await ok(['images', 'import', image.archivePath]);
  const images = await ok(['images', 'ls', '-q']);
  assert.deepEqual(images.trim().split('\n'), [image.name]);
  // Exactly the manifest, config and layer: the archive's index.json blob, held only by the
  // import lease, goes with the collection that deleting the lease triggers (as in
  // containerd, that collection runs just after import returns, so wait for it).
  const want = [image.manifestDigest, image.configDigest, image.layerDigest].sort();
  let content: string[] = [];
  for (const until = Date.now() + 60_000; Date.now() < until; await new Promise((r) => setTimeout(r, 300))) {
    content = (await ok(['content', 'ls', '-q'])).trim().split('\n').sort();
    if (content.length === want.length) break;
  }
  assert.deepEqual(content, want);
  const snaps = await ok(['snapshots', 'ls']);
  assert.match(snaps, /^sha256:[0-9a-f]{64}\s+Committed\s*$/m);
});

test('run --rm prints and exits with the container status; nothing is left behind', async () => {
  const before = await ok(['snapshots', 'ls']);
  const hello = await stack.ctr(['run', '--rm', image.name, 'id1', '/bin/echo', 'hello']);
  assert.equal(hello.code, 0, hello.stderr);
  assert.equal(hello.stdout, 'hello\n');
  const three = await stack.ctr(['run', '--rm', image.name, 'id2', '/bin/sh', '-c', 'exit 3']);
  assert.equal(three.code, 3, three.stderr);
  assert.equal((await ok(['containers', 'ls', '-q'])).trim(), '');
  assert.equal(await ok(['snapshots', 'ls']), before);
  assert.equal((await ok(['tasks', 'ls', '-q'])).trim(), '');
});

test('each process shows its title; one killed with -9 is restarted and the stack still works', async () => {
  const pids = stack.supervisor.pids();
  for (const app of APPS) {
    const pid = pids[app];
    assert.ok(pid, `${app} is not running`);
    const cmdline = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0')[0];
    assert.equal(cmdline, `flotilla-${app}`);
  }
  for (const app of ['content', 'node-agent', 'gateway'] as const) {
    const old = stack.supervisor.pids()[app]!;
    process.kill(old, 'SIGKILL');
    const until = Date.now() + 20_000;
    while (!(stack.supervisor.pids()[app] && stack.supervisor.pids()[app] !== old)) {
      assert.ok(Date.now() < until, `${app} was not restarted`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  // The restarted services answer again: import (content) and run (agent, gateway).
  const until = Date.now() + 30_000;
  for (;;) {
    const r = await stack.ctr(['images', 'import', image.archivePath]);
    if (r.code === 0) break;
    assert.ok(Date.now() < until, `import after restart kept failing: ${r.stderr}`);
    await new Promise((res) => setTimeout(res, 300));
  }
  const run = await stack.ctr(['run', '--rm', image.name, 'after-restart', '/bin/echo', 'still here']);
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout, 'still here\n');
});

test('a 10 MiB ingest, larger than one bus payload (8 MiB), keeps every byte', async () => {
  const data = Buffer.alloc(10 * 1024 * 1024);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  const ingest = await stack.ctr(['content', 'ingest', 'big-ref'], { input: data });
  assert.equal(ingest.code, 0, ingest.stderr);
  const dgst = 'sha256:' + createHash('sha256').update(data).digest('hex');
  const got = await stack.ctr(['content', 'get', dgst]);
  assert.equal(got.code, 0, got.stderr);
  assert.equal(got.stdoutBytes.length, data.length);
  assert.ok(got.stdoutBytes.equals(data), 'content read back differs from what was written');
});
