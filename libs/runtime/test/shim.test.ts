// ShimManager against the real containerd-shim-runc-v2 and runc: busybox containers on a
// bind-mounted rootfs, stdout through a FIFO, exit codes, kill, events, reconnect after an
// agent restart, cleanup after a dead shim. Nothing may be left running or mounted.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { constants as fsc, openSync, readFileSync, readdirSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { evTask, taskTypes, toTimestamp, ttrpcEvents, type Mount } from '@flotilla/api';
import { ErrorClass } from '@flotilla/errdefs';
import { ShimManager, defaultSpec, encodeSpec, type ShimEvent, type ShimManagerOptions } from '@flotilla/runtime';
import { TtrpcClient } from '@flotilla/ttrpc';

const NS = `rt-test-${process.pid}`;
const SHIM = 'containerd-shim-runc-v2';
let root: string;
let rootfsDir: string;
let opts: ShimManagerOptions;
let mgr: ShimManager;
const events: ShimEvent[] = [];
const logLines: string[] = [];
/** Our read ends of stdio FIFOs; open ones keep the process alive, so after() closes them all. */
const fifos: net.Socket[] = [];

function shimProcesses(): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
    } catch {
      continue; // exited meanwhile
    }
    const argv = cmd.split('\0');
    if (argv[0]?.endsWith(SHIM) && argv.includes(NS)) out.push(Number(pid));
  }
  return out;
}

/** The one shim daemon of task `id` (an earlier test's may still be exiting). */
function shimOfTask(id: string): number {
  const shims = shimProcesses().filter((p) => readFileSync(`/proc/${p}/cmdline`, 'latin1').split('\0').includes(id));
  assert.equal(shims.length, 1);
  return shims[0]!;
}

async function mountsUnder(dir: string): Promise<string[]> {
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8');
  return info.split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(dir));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(what: string, fn: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A FIFO for the task's stdout, opened by us (read side) before the shim opens it. */
async function stdoutFifo(id: string): Promise<{ path: string; text: () => string; close: () => void }> {
  const p = path.join(root, 'io', `${id}-stdout`);
  await fs.mkdir(path.dirname(p), { recursive: true });
  execFileSync('mkfifo', [p]);
  const sock = new net.Socket({ fd: openSync(p, fsc.O_RDWR | fsc.O_NONBLOCK), readable: true, writable: false });
  fifos.push(sock);
  let buf = '';
  sock.on('data', (d) => (buf += d));
  return { path: p, text: () => buf, close: () => sock.destroy() };
}

function rootfs(): Mount[] {
  return [{ type: 'bind', source: rootfsDir, target: '', options: ['rbind', 'rw'] }];
}

function spec(id: string, args: string[]): Uint8Array {
  return encodeSpec(defaultSpec({ args, namespace: NS, id, hostname: id }));
}

function topicsFor(id: string): string[] {
  return events
    .filter((e) => e.namespace === NS && decodeContainerId(e) === id)
    .map((e) => e.topic);
}

function decodeContainerId(e: ShimEvent): string | undefined {
  const v = e.event?.value;
  if (!v) return undefined;
  switch (e.event!.typeUrl) {
    case 'containerd.events.TaskCreate': return evTask.TaskCreate.decode(v).containerId;
    case 'containerd.events.TaskStart': return evTask.TaskStart.decode(v).containerId;
    case 'containerd.events.TaskExit': return evTask.TaskExit.decode(v).containerId;
    case 'containerd.events.TaskDelete': return evTask.TaskDelete.decode(v).containerId;
    default: return undefined;
  }
}

before(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-runtime-'));
  rootfsDir = path.join(root, 'rootfs');
  await fs.mkdir(path.join(rootfsDir, 'bin'), { recursive: true });
  for (const d of ['proc', 'dev', 'sys', 'run', 'tmp', 'etc']) await fs.mkdir(path.join(rootfsDir, d));
  await fs.copyFile('/bin/busybox', path.join(rootfsDir, 'bin', 'busybox'));
  await fs.chmod(path.join(rootfsDir, 'bin', 'busybox'), 0o755);
  for (const cmd of ['sh', 'echo', 'sleep', 'cat', 'hostname']) await fs.symlink('busybox', path.join(rootfsDir, 'bin', cmd));
  opts = {
    stateDir: path.join(root, 'state'),
    runDir: path.join(root, 'run'),
    eventsSocket: path.join(root, 'run', 'events.sock'),
    grpcAddress: path.join(root, 'containerd.sock'),
    log: (msg, fields) => logLines.push(`${msg} ${JSON.stringify(fields)}`),
    onEvent: (e) => void events.push(e),
  };
  mgr = new ShimManager(opts);
  await mgr.start();
});

after(async () => {
  await mgr.close();
  for (const f of fifos) f.destroy();
  // Whatever a failed test left: kill its shims and cgroups, then check nothing remains.
  for (const pid of shimProcesses()) process.kill(pid, 'SIGKILL');
  const runcRoot = path.join('/run/containerd/runc', NS);
  for (const c of execFileSync('runc', ['--root', runcRoot, 'list', '-q']).toString().split('\n').filter(Boolean)) {
    execFileSync('runc', ['--root', runcRoot, 'delete', '--force', c]);
  }
  execFileSync('sh', ['-c', `for d in /sys/fs/cgroup/*/${NS}; do [ -d "$d" ] && rmdir "$d"/* "$d" 2>/dev/null; done; true`]);
  const leftMounts = await mountsUnder(root);
  for (const m of leftMounts.reverse()) execFileSync('umount', ['-l', m]);
  await fs.rm(root, { recursive: true, force: true });
  await fs.rm(path.join('/run/containerd/runc', NS), { recursive: true, force: true });
  assert.deepEqual(leftMounts, [], 'no mounts left');
});

test('echo hello: create, start, stdout, wait 0, delete; events and bundle layout as containerd', async () => {
  const id = 'echo';
  const out = await stdoutFifo(id);
  const { pid } = await mgr.createTask({
    namespace: NS, id, bundleSpec: spec(id, ['/bin/echo', 'hello']), rootfs: rootfs(),
    stdin: '', stdout: out.path, stderr: out.path, terminal: false,
  });
  assert.ok(pid > 0);

  // The bundle as containerd lays it out, and the shim's socket: a file, 0600, not abstract.
  const bundle = mgr.bundlePath(NS, id);
  assert.equal(bundle, path.join(opts.stateDir, NS, id));
  assert.equal((await fs.stat(bundle)).mode & 0o777, 0o700);
  assert.ok((await fs.lstat(path.join(bundle, 'log'))).isFIFO());
  assert.equal(await fs.readlink(path.join(bundle, 'work')), path.join(opts.runDir!, 'work', NS, id));
  assert.equal(await fs.readFile(path.join(bundle, 'shim-binary-path'), 'utf8'), SHIM);
  assert.deepEqual(JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8')).process.args, ['/bin/echo', 'hello']);
  const address = await fs.readFile(path.join(bundle, 'address'), 'utf8');
  assert.match(address, /^unix:\/\/\/run\/containerd\/s\/[0-9a-f]{64}$/);
  const sockStat = await fs.lstat(address.slice('unix://'.length));
  assert.ok(sockStat.isSocket());
  assert.equal(sockStat.mode & 0o777, 0o600);
  // The shim mounted the rootfs on <bundle>/rootfs.
  assert.deepEqual(await mountsUnder(path.join(bundle, 'rootfs')), [path.join(bundle, 'rootfs')]);
  assert.equal((await mgr.state(NS, id)).status, taskTypes.Status.CREATED);
  const [shimPid] = shimProcesses();
  assert.ok(shimPid, 'a shim runs for the task');

  const started = await mgr.startTask(NS, id);
  assert.equal(started.pid, pid);
  const exited = await mgr.wait(NS, id);
  assert.equal(exited.exitStatus, 0);
  assert.ok(exited.exitedAt && exited.exitedAt.seconds > 0);
  await until('hello on stdout', () => out.text() === 'hello\n');
  assert.equal((await mgr.state(NS, id)).status, taskTypes.Status.STOPPED);

  const del = await mgr.deleteTask(NS, id);
  assert.equal(del.pid, pid);
  assert.equal(del.exitStatus, 0);
  out.close();
  assert.equal(mgr.has(NS, id), false);
  await assert.rejects(fs.lstat(bundle), { code: 'ENOENT' });
  await assert.rejects(fs.lstat(path.join(opts.runDir!, 'work', NS, id)), { code: 'ENOENT' });
  await assert.rejects(fs.lstat(address.slice('unix://'.length)), { code: 'ENOENT' });
  assert.deepEqual(await mountsUnder(bundle), []);
  await until('shim exit', () => !alive(shimPid!));
  await assert.rejects(mgr.state(NS, id), { errorClass: ErrorClass.NotFound });

  await until('delete event', () => topicsFor(id).includes('/tasks/delete'));
  assert.deepEqual(topicsFor(id), ['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
  const exit = events.find((e) => e.topic === '/tasks/exit' && decodeContainerId(e) === id)!;
  assert.equal(evTask.TaskExit.decode(exit.event!.value).exitStatus, 0);
  assert.equal(evTask.TaskExit.decode(exit.event!.value).pid, pid);
  assert.ok(exit.timestamp && exit.timestamp.seconds > 0);
  // The shim's log went through the FIFO into our log.
  assert.ok(logLines.some((l) => l.startsWith('shim ') && l.includes(`"id":"${id}"`)), logLines.join('\n'));
});

test('sh -c "exit 3": wait gives 3', async () => {
  const id = 'exit3';
  await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sh', '-c', 'exit 3']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
  await mgr.startTask(NS, id);
  assert.equal((await mgr.wait(NS, id)).exitStatus, 3);
  assert.equal((await mgr.deleteTask(NS, id)).exitStatus, 3);
});

test('sleep 100 killed with SIGKILL: wait gives 137; pids lists the process while it runs', async () => {
  const id = 'sleeper';
  const { pid } = await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sleep', '100']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
  await mgr.startTask(NS, id);
  assert.equal((await mgr.state(NS, id)).status, taskTypes.Status.RUNNING);
  assert.deepEqual((await mgr.pids(NS, id)).processes.map((p) => p.pid), [pid]);
  // Deleting a running task is refused by the shim, and the task stays.
  // (The runc shim answers with a plain error, so the class is Unknown.)
  await assert.rejects(mgr.deleteTask(NS, id), {
    errorClass: ErrorClass.Unknown,
    message: 'failed to delete task: cannot delete a running process: unknown',
  });
  assert.equal(mgr.has(NS, id), true);
  const waiting = mgr.wait(NS, id);
  await mgr.kill(NS, id, 9, false);
  assert.equal((await waiting).exitStatus, 137);
  await mgr.deleteTask(NS, id);
  assert.equal(alive(pid), false);
});

test('exec adds a process to a running task', async () => {
  const id = 'execd';
  await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sleep', '100']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
  await mgr.startTask(NS, id);
  const out = await stdoutFifo(`${id}-exec`);
  const proc = { terminal: false, user: { uid: 0, gid: 0 }, args: ['/bin/hostname'], env: ['PATH=/bin'], cwd: '/' };
  await mgr.exec(NS, id, 'e1', {
    spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Process', value: Buffer.from(JSON.stringify(proc)) },
    terminal: false, stdin: '', stdout: out.path, stderr: out.path,
  });
  await mgr.startTask(NS, id, 'e1');
  assert.equal((await mgr.wait(NS, id, 'e1')).exitStatus, 0);
  await until('hostname on stdout', () => out.text() === `${id}\n`);
  assert.equal((await mgr.deleteTask(NS, id, 'e1')).exitStatus, 0);
  out.close();
  await mgr.kill(NS, id, 9, false);
  assert.equal((await mgr.wait(NS, id)).exitStatus, 137);
  await mgr.deleteTask(NS, id);
});

test('a task delete ends the shim as containerd 1.6 does: the shim binary runs once (start), never `delete`', async () => {
  // A wrapper recording each invocation of the shim binary, given as the runtime path.
  const wrapper = path.join(root, 'shim-wrapper');
  const calls = path.join(root, 'shim-calls');
  await fs.writeFile(wrapper, `#!/bin/sh\necho "$*" >> ${calls}\nexec ${SHIM} "$@"\n`, { mode: 0o755 });
  const id = 'once';
  const { pid } = await mgr.createTask({ namespace: NS, id, runtime: wrapper, bundleSpec: spec(id, ['/bin/sh', '-c', 'exit 0']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
  const bundle = mgr.bundlePath(NS, id);
  const address = await fs.readFile(path.join(bundle, 'address'), 'utf8');
  const shimPid = shimProcesses().find((p) => readFileSync(`/proc/${p}/cmdline`, 'latin1').split('\0').includes(id));
  assert.ok(shimPid);
  await mgr.startTask(NS, id);
  assert.equal((await mgr.wait(NS, id)).exitStatus, 0);
  const del = await mgr.deleteTask(NS, id);
  assert.equal(del.pid, pid);
  assert.equal(del.exitStatus, 0);
  const lines = (await fs.readFile(calls, 'utf8')).trim().split('\n');
  assert.deepEqual(lines.map((l) => l.split(' ').pop()), ['start']);
  // Without `shim delete`, everything is still gone: bundle, work dir, socket, mounts, shim.
  await assert.rejects(fs.lstat(bundle), { code: 'ENOENT' });
  await assert.rejects(fs.lstat(path.join(opts.runDir!, 'work', NS, id)), { code: 'ENOENT' });
  await assert.rejects(fs.lstat(address.slice('unix://'.length)), { code: 'ENOENT' });
  assert.deepEqual(await mountsUnder(bundle), []);
  await until('shim exit', () => !alive(shimPid!));
  const runcRoot = path.join('/run/containerd/runc', NS);
  assert.ok(!execFileSync('runc', ['--root', runcRoot, 'list', '-q']).toString().split('\n').includes(id), 'runc has no container left');
});

test('a deleted task\'s bundle is out of use when Delete answers and removed after; the id can be reused at once', async () => {
  const id = 'reuse';
  const nsDir = path.join(opts.stateDir, NS);
  const work = path.join(opts.runDir!, 'work', NS, id);
  for (let round = 0; round < 3; round++) {
    await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sh', '-c', 'exit 0']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    // Files enough that their removal is still running when the Delete answers.
    for (let i = 0; i < 300; i++) await fs.writeFile(path.join(work, `f${i}`), 'x');
    await mgr.startTask(NS, id);
    assert.equal((await mgr.wait(NS, id)).exitStatus, 0);
    await mgr.deleteTask(NS, id);
    await assert.rejects(fs.lstat(mgr.bundlePath(NS, id)), { code: 'ENOENT' });
    await assert.rejects(fs.lstat(work), { code: 'ENOENT' });
    if (round === 0) assert.ok((await fs.readdir(nsDir)).includes(`.${id}`), 'the renamed bundle is removed after the answer');
  }
  await mgr.settled();
  assert.ok(!(await fs.readdir(nsDir)).some((n) => n.endsWith(id)), 'no renamed bundle left');
  assert.ok(!(await fs.readdir(path.dirname(work))).some((n) => n.endsWith(id)), 'no renamed work dir left');
  assert.deepEqual(await mountsUnder(nsDir), []);
});

test('log FIFOs come from the pool and stay FIFOs after many creates', async () => {
  const pooled = (await fs.readdir(path.join(opts.stateDir, '.fifos'))).length;
  assert.ok(pooled > 0, 'FIFOs are made ahead');
  // More creates than one pool batch, so the pool is refilled meanwhile.
  for (let i = 0; i < 20; i++) {
    const id = `fifo-${i}`;
    await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sh', '-c', 'exit 0']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    const st = await fs.lstat(path.join(mgr.bundlePath(NS, id), 'log'));
    assert.ok(st.isFIFO());
    assert.equal(st.mode & 0o777, 0o700);
    await mgr.deleteTask(NS, id);
  }
  // The shims wrote their logs through the pooled FIFOs.
  assert.ok(logLines.some((l) => l.startsWith('shim ') && l.includes('"id":"fifo-19"')), logLines.join('\n'));
});

test('a failing create reports the OCI error and leaves no shim, bundle or mount', async () => {
  const id = 'broken';
  // A shim of an earlier test may still be exiting (Delete answers before its shim is
  // gone), so what must hold is that no shim started here is left, not a count.
  const before = new Set(shimProcesses());
  await assert.rejects(
    mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/no/such/binary']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false }),
    (err: { message?: string }) => {
      assert.match(err.message!, /^failed to create shim task: OCI runtime create failed: /);
      return true;
    },
  );
  assert.equal(mgr.has(NS, id), false);
  await assert.rejects(fs.lstat(mgr.bundlePath(NS, id)), { code: 'ENOENT' });
  await until('shim gone', () => shimProcesses().every((p) => before.has(p)));
  assert.deepEqual(await mountsUnder(path.join(opts.stateDir, NS)), []);
  // Bad ids and runtimes are refused before anything starts.
  await assert.rejects(mgr.createTask({ namespace: NS, id: 'bad/id', bundleSpec: spec('x', ['/bin/true']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false }), { errorClass: ErrorClass.InvalidArgument });
  await assert.rejects(mgr.createTask({ namespace: NS, id: 'rt', runtime: 'nodots', bundleSpec: spec('rt', ['/bin/true']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false }), { errorClass: ErrorClass.InvalidArgument });
});

test('a restarted manager reconnects to a running shim and still gets its events', async () => {
  const id = 'survivor';
  const { pid } = await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sleep', '100']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
  await mgr.startTask(NS, id);
  // Events in flight while the agent is down are retried by the shim, possibly out of
  // order; this test is about the ones after the restart.
  await until('start event', () => topicsFor(id).includes('/tasks/start'));
  await mgr.close();
  assert.ok(alive(pid), 'the container outlives the manager');
  mgr = new ShimManager(opts);
  await mgr.start();
  assert.deepEqual(await mgr.loadExisting(), [{ namespace: NS, id }]);
  assert.equal((await mgr.state(NS, id)).pid, pid);
  const waiting = mgr.wait(NS, id);
  await mgr.kill(NS, id, 9, false);
  assert.equal((await waiting).exitStatus, 137);
  await mgr.deleteTask(NS, id);
  // The shim's publisher reconnected to the new events server.
  await until('exit event after restart', () => topicsFor(id).includes('/tasks/delete'));
  assert.deepEqual(topicsFor(id), ['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
});

test('a shim that dies is cleaned up: container killed, bundle removed, exit and delete reported', async () => {
  const id = 'orphan';
  const { pid } = await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sleep', '100']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
  await mgr.startTask(NS, id);
  const address = await fs.readFile(path.join(mgr.bundlePath(NS, id), 'address'), 'utf8');
  const shim = shimOfTask(id);
  process.kill(shim, 'SIGKILL');
  await until('dead-shim delete event', () => topicsFor(id).includes('/tasks/delete'));
  assert.equal(mgr.has(NS, id), false);
  const exit = events.filter((e) => e.topic === '/tasks/exit' && decodeContainerId(e) === id).pop()!;
  const ev = evTask.TaskExit.decode(exit.event!.value);
  assert.equal(ev.exitStatus, 137);
  assert.equal(ev.pid, pid);
  await until('container killed', () => !alive(pid));
  // The dead shim's socket file is removed too.
  await assert.rejects(fs.lstat(address.slice('unix://'.length)), { code: 'ENOENT' });
  await assert.rejects(fs.lstat(mgr.bundlePath(NS, id)), { code: 'ENOENT' });
  assert.deepEqual(await mountsUnder(path.join(opts.stateDir, NS)), []);
});

test('an exit a shim sent before dying, read after its cleanup reported the exit, is not reported again', async () => {
  const id = 'late-exit';
  const { pid } = await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sleep', '100']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
  await mgr.startTask(NS, id);
  const shim = shimOfTask(id);
  process.kill(shim, 'SIGKILL');
  await until('dead-shim delete event', () => topicsFor(id).includes('/tasks/delete'));
  const exits = () => events.filter((e) => e.topic === '/tasks/exit' && decodeContainerId(e) === id).length;
  assert.equal(exits(), 1);
  // What the shim's publisher would deliver late: the same exit, on the agent's events socket.
  const late = await TtrpcClient.connect(opts.eventsSocket);
  try {
    const exit = evTask.TaskExit.encode({ containerId: id, id, pid, exitStatus: 137, exitedAt: toTimestamp() }).finish();
    const req = ttrpcEvents.ForwardRequest.encode({
      envelope: { timestamp: toTimestamp(), namespace: NS, topic: '/tasks/exit', event: { typeUrl: 'containerd.events.TaskExit', value: Buffer.from(exit) } },
    }).finish();
    // Forward answers once the event is published or dropped.
    await late.call('containerd.services.events.ttrpc.v1.Events', 'Forward', req);
  } finally {
    late.close();
  }
  assert.equal(exits(), 1);
});

test('a State in flight when the shim goes away is NotFound (deleted meanwhile), as containerd\'s shimTask.State', async () => {
  const id = 'vanishing';
  await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sleep', '100']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
  await mgr.startTask(NS, id);
  const shim = shimOfTask(id);
  // A stopped shim cannot answer: the State is in flight when the connection drops.
  process.kill(shim, 'SIGSTOP');
  const state = mgr.state(NS, id);
  await new Promise((r) => setTimeout(r, 100));
  process.kill(shim, 'SIGKILL');
  await assert.rejects(state, (err: { errorClass?: string }) => err.errorClass === ErrorClass.NotFound);
  // Once the connection is gone the task is no longer there at all.
  await assert.rejects(mgr.state(NS, id), (err: { errorClass?: string }) => err.errorClass === ErrorClass.NotFound);
  await until('dead-shim delete event', () => topicsFor(id).includes('/tasks/delete'));
});

test('with a logDir, every shim logs into one shims.log, each line prefixed with its namespace and id', async () => {
  const logDir = path.join(root, 'logs');
  await mgr.close();
  mgr = new ShimManager({ ...opts, logDir });
  await mgr.start();
  const ids = ['log-a', 'log-b'];
  for (const id of ids) {
    await mgr.createTask({ namespace: NS, id, bundleSpec: spec(id, ['/bin/sh', '-c', 'exit 0']), rootfs: rootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    await mgr.startTask(NS, id);
    await mgr.wait(NS, id);
    await mgr.deleteTask(NS, id);
  }
  const file = path.join(logDir, 'shims.log');
  const text = () => fs.readFile(file, 'utf8').catch(() => '');
  // containerd-shim-runc-v2 logs "starting signal loop" once it serves.
  for (const id of ids) await until(`${id} logged`, async () => (await text()).split('\n').some((l) => l.startsWith(`${NS}/${id}: `) && l.includes('starting signal loop')));
  assert.deepEqual(await fs.readdir(logDir), ['shims.log'], 'one file for all shims');
  const lines = (await text()).split('\n').filter(Boolean);
  for (const l of lines) assert.match(l, new RegExp(`^${NS}/log-[ab]: time="`), 'whole lines, each with its prefix');
});

test('nothing is left running', async () => {
  await until('no shims', () => shimProcesses().length === 0);
  await mgr.settled();
  assert.deepEqual(await fs.readdir(path.join(opts.stateDir, NS)), []);
});
