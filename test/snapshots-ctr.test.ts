// The real ctr against flotilla and against Debian's containerd (private socket), the same
// commands on both sides: `ctr snapshots prepare / view / commit / ls / tree / info /
// usage / mounts / rm / label / diff` for overlayfs and native, the events they publish,
// and `ctr images mount / unmount` of a three-layer image that deletes files, replaces a
// directory (opaque) and uses hardlinks, symlinks, devices, modes and owners: the mounted
// root filesystems must be the same on both sides.
// Outputs are compared after replacing what legitimately differs: temp paths, snapshot
// ids (numbered in order of appearance on each side), timestamps.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startReferenceContainerd, startStack, testNamespace, type CtrOptions, type CtrResult, type Reference, type Stack } from '@flotilla/testing';
import { describeTree, layerTar, ociArchive, tarEntries } from './snapshots-support.js';

const execFileP = promisify(execFile);

let stack: Stack;
let ref: Reference;
let dir: string;

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-snapctr-'));
  ref = await startReferenceContainerd();
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
  await ref?.stop();
  // Mount points of a failed run are unmounted before the directory goes.
  await execFileP('sh', ['-c', `grep -o " ${dir}[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l`]).catch(() => {});
  await fs.rm(dir, { recursive: true, force: true });
});

interface Side {
  name: 'flotilla' | 'containerd';
  socket: string;
  ctr(args: string[], opts?: CtrOptions): Promise<CtrResult>;
  /** This side's scratch directory (mount points). */
  work: string;
  ids: Map<string, number>;
}

async function sides(): Promise<Side[]> {
  const mk = async (name: Side['name'], socket: string, run: Side['ctr']): Promise<Side> => {
    const work = await fs.mkdtemp(path.join(dir, `${name}-`));
    return { name, socket, ctr: run, work, ids: new Map() };
  };
  return [await mk('flotilla', stack.socket, (a, o) => stack.ctr(a, o)), await mk('containerd', ref.socket, (a, o) => ref.ctr(a, o))];
}

/** What differs legitimately between the two sides, replaced by placeholders. */
function normalize(side: Side, ns: string, text: string): string {
  const id = (raw: string) => {
    if (!side.ids.has(raw)) side.ids.set(raw, side.ids.size + 1);
    return `<snap${side.ids.get(raw)}>`;
  };
  return text
    .replace(/\/tmp\/flotilla-test-[^/\s]+\/state\/snapshotter\/(?:overlayfs|native)\/snapshots\/(\d+)/g, (_m, n: string) => id(n))
    .replace(/\/tmp\/flotilla-ref-[^/\s]+\/root\/io\.containerd\.snapshotter\.v1\.(?:overlayfs|native)\/snapshots\/(\d+)/g, (_m, n: string) => id(n))
    .replaceAll(side.work, '<work>')
    .replace(new RegExp(`${ns}/\\d+/`, 'g'), `${ns}/<seq>/`)
    .replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z/g, '<time>')
    .replace(/time="[^"]*"/g, 'time=<time>')
    // the temporary views ctr's diff makes: "<key>-view-<unix nanos % 1e9>-<4 random chars>"
    .replace(/-view-\d+-[A-Za-z0-9_-]{4}"/g, '-view-<rand>"')
    .trim();
}

interface Step {
  args: string[];
  code: number;
  stdout: string;
  stderr: string;
}

async function step(side: Side, ns: string, args: string[]): Promise<Step> {
  const r = await side.ctr(args, { namespace: ns });
  // ctr label prints a Go map: in random order.
  if (args.includes('label') && r.code === 0) r.stdout = r.stdout.trim().split(',').sort().join(',');
  return { args: args.map((a) => a.replaceAll(side.work, '<work>')), code: r.code, stdout: normalize(side, ns, r.stdout), stderr: normalize(side, ns, r.stderr) };
}

/** Runs the mount command `ctr snapshots mounts` printed. */
async function mountPrinted(side: Side, r: CtrResult): Promise<void> {
  const cmd = r.stdout.trim();
  assert.match(cmd, /^mount -t \S+ \S+ \S+ -o \S+$/, `${side.name}: ${cmd} ${r.stderr}`);
  await execFileP('sh', ['-c', cmd]);
}

/** Starts `ctr events` on a side; stop() returns the lines of namespace `ns`. */
function events(side: Side, ns: string): { stop(): Promise<string[]> } {
  const child = spawn('ctr', ['--address', side.socket, 'events'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  return {
    async stop() {
      await new Promise((r) => setTimeout(r, 1000)); // the last events in flight
      child.kill('SIGTERM');
      await new Promise((r) => child.once('close', r));
      return out
        .split('\n')
        .filter((l) => l.includes(` ${ns} `) && l.includes('/snapshot/'))
        .map((l) => normalize(side, ns, l).replace(/^\S+ \S+ (?:[+-]\d{4} \S+ )?/, ''));
    },
  };
}

/** The scripted session, for one snapshotter, on one side. */
async function session(side: Side, ns: string, sn: string): Promise<{ steps: Step[]; diffs: unknown[]; tree: unknown }> {
  const steps: Step[] = [];
  const run = async (...args: string[]) => {
    const s = await step(side, ns, ['snapshots', '--snapshotter', sn, ...args]);
    steps.push(s);
    return s;
  };
  const mnt = path.join(side.work, `${sn}-mnt`);
  await fs.mkdir(mnt, { recursive: true });
  const raw = async (...args: string[]) => side.ctr(['snapshots', '--snapshotter', sn, ...args], { namespace: ns });

  await run('prepare', 'base');
  await run('prepare', 'base');
  await run('mounts', mnt, 'base');
  await mountPrinted(side, await raw('mounts', mnt, 'base'));
  try {
    await fs.mkdir(path.join(mnt, 'etc/conf.d'), { recursive: true });
    await fs.writeFile(path.join(mnt, 'etc/hosts'), '127.0.0.1 localhost\n');
    await fs.writeFile(path.join(mnt, 'etc/conf.d/a'), 'a\n');
    await fs.symlink('hosts', path.join(mnt, 'etc/hosts.link'));
    await fs.mkdir(path.join(mnt, 'bin'));
    await fs.writeFile(path.join(mnt, 'bin/tool'), '#!/bin/sh\n', { mode: 0o755 });
    await fs.chmod(path.join(mnt, 'bin/tool'), 0o4755);
    await fs.link(path.join(mnt, 'bin/tool'), path.join(mnt, 'bin/tool2'));
    await fs.mkdir(path.join(mnt, 'home/user'), { recursive: true });
    await fs.writeFile(path.join(mnt, 'home/user/file'), 'mine\n');
    await fs.chown(path.join(mnt, 'home/user'), 1000, 1000);
    await fs.chown(path.join(mnt, 'home/user/file'), 1000, 1000);
    await fs.mkdir(path.join(mnt, 'old/deep'), { recursive: true });
    await fs.writeFile(path.join(mnt, 'old/deep/x'), 'x\n');
    await fs.writeFile(path.join(mnt, 'gone'), 'gone\n');
  } finally {
    await execFileP('umount', [mnt]);
  }
  await run('usage', 'base');
  await run('commit', 'base-c', 'base');
  await run('info', 'base-c');
  // ctr's view sets no labels: labelled at once so Debian's garbage collector (which runs
  // after the lease deletions of the diffs below) keeps it, as the prepared ones.
  await run('view', 'v1', 'base-c');
  await run('label', 'v1', `containerd.io/gc.root=keep`);
  await run('prepare', 'a1', 'base-c');
  await run('mounts', mnt, 'v1');
  await run('mounts', mnt, 'a1');
  await mountPrinted(side, await raw('mounts', mnt, 'a1'));
  try {
    await fs.rm(path.join(mnt, 'gone'));
    await fs.rm(path.join(mnt, 'old'), { recursive: true });
    await fs.writeFile(path.join(mnt, 'old'), 'a file now\n');
    await fs.writeFile(path.join(mnt, 'etc/hosts'), '10.0.0.1 other\n');
    await fs.chmod(path.join(mnt, 'etc/conf.d'), 0o700);
    await fs.mkdir(path.join(mnt, 'new'));
    await fs.writeFile(path.join(mnt, 'new/file'), 'new\n');
  } finally {
    await execFileP('umount', [mnt]);
  }
  await run('ls');
  await run('tree');
  await run('usage');
  await run('usage', 'a1');
  await run('label', 'a1', 'foo=bar', 'x=y');
  await run('label', 'a1', 'foo=');
  await run('info', 'a1');
  await run('rm', 'base-c');
  await run('rm', 'nope');
  await run('mounts', mnt, 'base-c');
  await run('commit', 'zz', 'v1');
  await run('prepare', 'q1', 'v1');
  await run('prepare', 'q2', 'nope');
  await run('view', 'v1', 'base-c');
  await run('info', 'nope');

  // The tree of a1 as a read-only view of its commit shows it.
  await run('commit', 'a1-c', 'a1');
  await run('view', 'v2', 'a1-c');
  await run('label', 'v2', `containerd.io/gc.root=keep`);
  await mountPrinted(side, await raw('mounts', mnt, 'v2'));
  let tree: unknown;
  try {
    tree = await describeTree(mnt);
  } finally {
    await execFileP('umount', [mnt]);
  }

  // Layers: the tar entries (times aside) of the diffs, gzip and plain, and of a against b.
  const diffs: unknown[] = [];
  for (const args of [['diff', 'a1-c'], ['diff', '--media-type', 'application/vnd.oci.image.layer.v1.tar', 'a1-c'], ['diff', 'a1-c', 'v1'], ['diff', 'v1'], ['diff', 'base-c']]) {
    const r = await raw(...args);
    diffs.push({ args, code: r.code, stderr: normalize(side, ns, r.stderr), entries: r.code === 0 ? await tarEntries(r.stdoutBytes) : [] });
  }
  await run('diff', '--media-type', 'application/x-unknown', 'a1-c');

  await run('rm', 'v1', 'v2');
  await run('rm', 'a1-c');
  await run('rm', 'base-c');
  await run('ls');
  return { steps, diffs, tree };
}

for (const sn of ['overlayfs', 'native']) {
  test(`ctr snapshots commands on ${sn} answer as Debian's containerd`, { timeout: 10 * 60_000 }, async (t) => {
    const ns = testNamespace(t.name);
    const [fl, cd] = await sides();
    const results = [];
    for (const side of [fl!, cd!]) {
      const ev = events(side, ns);
      await new Promise((r) => setTimeout(r, 500)); // subscribed before the first event
      const s = await session(side, ns, sn);
      results.push({ ...s, events: await ev.stop() });
    }
    const [f, c] = results as [(typeof results)[0], (typeof results)[0]];
    for (let i = 0; i < Math.max(f.steps.length, c.steps.length); i++) {
      assert.deepEqual(f.steps[i], c.steps[i], `step ${i}: ctr snapshots ${c.steps[i]?.args.join(' ')}`);
    }
    assert.deepEqual(f.diffs, c.diffs, 'ctr snapshots diff layers');
    assert.deepEqual(f.tree, c.tree, 'tree of the committed snapshot');
    // Sanity: the session did what it claims (so equal outputs are not equally empty).
    assert.ok(c.steps.some((s) => s.stdout.includes('base-c') && s.stdout.includes('Committed')));
    assert.ok((c.diffs[0] as { entries: unknown[] }).entries.length >= 5);
    assert.deepEqual(f.events, c.events, 'snapshot events');
    assert.ok(c.events.some((l) => l.includes('/snapshot/prepare')) && c.events.some((l) => l.includes('/snapshot/commit')) && c.events.some((l) => l.includes('/snapshot/remove')), c.events.join('\n'));
  });
}

/** Three layers: a base, one that deletes, replaces and relinks, one that makes a directory opaque. */
async function threeLayers(): Promise<Buffer[]> {
  const l1 = await layerTar([
    { name: 'bin/', type: 'directory' },
    { name: 'bin/app', mode: 0o4755, content: '#!/bin/sh\necho app\n' },
    { name: 'bin/app-hard', type: 'link', linkname: 'bin/app' },
    { name: 'bin/sh', type: 'symlink', linkname: '/bin/app' },
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/passwd', content: 'root:x:0:0::/root:/bin/sh\n' },
    { name: 'etc/shadow', mode: 0o640, gid: 42, content: 'root:*:1::::::\n' },
    { name: 'etc/conf/', type: 'directory', mode: 0o750, uid: 5, gid: 6 },
    { name: 'etc/conf/a', content: 'a\n' },
    { name: 'etc/conf/b', content: 'b\n' },
    { name: 'home/', type: 'directory' },
    { name: 'home/u/', type: 'directory', mode: 0o700, uid: 1000, gid: 1000 },
    { name: 'home/u/.profile', uid: 1000, gid: 1000, content: 'export A=1\n' },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    { name: 'var/', type: 'directory' },
    { name: 'var/cache/', type: 'directory' },
    { name: 'var/cache/big', content: Buffer.alloc(100_000, 7) },
    { name: 'var/cache/keep', content: 'keep\n' },
    { name: 'dev/', type: 'directory' },
    { name: 'dev/null', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 },
    { name: 'dev/fifo', type: 'fifo', mode: 0o600 },
    { name: 'data/', type: 'directory', mode: 0o755 },
    { name: 'data/x', content: 'x\n', pax: { 'SCHILY.xattr.user.note': 'hello' } },
  ]);
  const l2 = await layerTar([
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/.wh.shadow', content: '' },
    { name: 'etc/passwd', content: 'root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n' },
    { name: 'var/cache/', type: 'directory' },
    { name: 'var/cache/.wh.big', content: '' },
    { name: 'bin/', type: 'directory' },
    { name: 'bin/app', mode: 0o755, content: '#!/bin/sh\necho app v2\n' },
    { name: 'bin/app-link2', type: 'link', linkname: 'bin/app' },
    { name: 'data', content: 'data is a file now\n', mode: 0o600, uid: 7, gid: 8 },
    { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
    { name: 'usr/', type: 'directory' },
    { name: 'usr/lib/', type: 'directory' },
    { name: 'usr/lib/libc.so', mode: 0o755, content: 'ELF' },
  ]);
  const l3 = await layerTar([
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/conf/', type: 'directory', mode: 0o755, uid: 0, gid: 0 },
    { name: 'etc/conf/.wh..wh..opq', content: '' },
    { name: 'etc/conf/c', content: 'c only\n' },
    { name: 'home/', type: 'directory' },
    { name: 'home/.wh.u', content: '' },
    { name: 'home/v/', type: 'directory', mode: 0o755, uid: 1001, gid: 1001 },
    { name: 'lib/', type: 'directory' }, // through the symlink: usr/lib stays, lib stays a link
    { name: 'usr/lib/extra', content: 'extra\n' },
    { name: 'tmp/.wh..wh..opq', content: '' },
  ]);
  return [l1, l2, l3];
}

for (const sn of ['overlayfs', 'native']) {
  test(`ctr images mount of a three-layer image on ${sn} gives the root filesystem Debian's containerd gives`, { timeout: 10 * 60_000 }, async (t) => {
    const ns = testNamespace(t.name);
    const image = await ociArchive(dir, `flotilla.test/layers-${sn}:v1`, await threeLayers());
    const got: Record<string, unknown> = {};
    for (const side of await sides()) {
      const imp = await side.ctr(['images', 'import', '--snapshotter', sn, image.archivePath], { namespace: ns, timeoutMs: 120_000 });
      assert.equal(imp.code, 0, `${side.name} import: ${imp.stderr}`);
      const target = path.join(side.work, 'rootfs');
      await fs.mkdir(target);
      // ctr 1.6's images mount reads --snapshotter as a global flag, which ctr does not
      // have: it always mounts from overlayfs (on both sides alike).
      const m = await step(side, ns, ['images', 'mount', '--snapshotter', sn, image.name, target]);
      assert.equal(m.code, 0, `${side.name} images mount: ${m.stderr}`);
      let tree: Record<string, unknown>;
      let writable: boolean;
      try {
        tree = await describeTree(target);
        writable = await fs.writeFile(path.join(target, 'probe'), 'x').then(() => true, () => false);
      } finally {
        const u = await step(side, ns, ['images', 'unmount', '--rm', target]);
        assert.equal(u.code, 0, `${side.name} images unmount: ${u.stderr}`);
        got[`${side.name}:unmount`] = u;
      }
      const unmounted = await fs.readdir(target);
      // The unpacked chain on the snapshotter asked for, seen through a view of its top.
      // prepare, not view: ctr labels it gc.root, so neither garbage collector takes it meanwhile.
      const v = await step(side, ns, ['snapshots', '--snapshotter', sn, 'prepare', 'rootfs-view', image.chainId]);
      assert.equal(v.code, 0, `${side.name} view: ${v.stderr}`);
      const printed = await side.ctr(['snapshots', '--snapshotter', sn, 'mounts', target, 'rootfs-view'], { namespace: ns });
      await mountPrinted(side, printed);
      let viewTree: Record<string, unknown>;
      try {
        viewTree = await describeTree(target);
      } finally {
        await execFileP('umount', [target]);
      }
      const rm = await step(side, ns, ['snapshots', '--snapshotter', sn, 'rm', 'rootfs-view']);
      const ls = await step(side, ns, ['snapshots', '--snapshotter', sn, 'ls']);
      got[side.name] = { mount: m, tree, writable, unmounted, viewTree, rm, ls };
    }
    const f = got.flotilla as { tree: Record<string, unknown> };
    const c = got.containerd as { tree: Record<string, unknown>; viewTree: Record<string, unknown>; ls: Step; mount: Step };
    assert.deepEqual(got.flotilla, got.containerd);
    assert.deepEqual(got['flotilla:unmount'], got['containerd:unmount']);
    // The image did what it claims on the reference, so equality means something.
    assert.equal(c.mount.stdout.split('\n')[0], image.chainId);
    for (const p of ['etc/shadow', 'var/cache/big', 'home/u', 'etc/conf/a', 'tmp/.wh..wh..opq']) assert.equal(c.tree[p], undefined, p);
    for (const p of ['bin/app-link2', 'etc/conf/c', 'usr/lib/extra', 'dev/null', 'home/v', 'data']) assert.ok(c.tree[p], p);
    assert.ok(f.tree['bin/app-link2'] && (f.tree['bin/app-link2'] as { links?: string[] }).links?.includes('bin/app'));
    assert.deepEqual(c.viewTree, c.tree, 'a snapshot on the unpacked chain shows the same tree');
    assert.equal(c.ls.stdout.split('\n').length, 4, c.ls.stdout); // header and the three layers
  });
}
