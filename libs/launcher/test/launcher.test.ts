// `npm start`'s launcher (the built dist/tools/launcher.js) end to end: it prints
// `ready: <socket>` once the real ctr gets an answer, restarts an app killed with -9, and on
// SIGTERM leaves nothing running — apps, servers, shims, containers, mounts, the socket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { APPS } from '@flotilla/launcher';
import { buildBusyboxImage, ctr, startNats, startPostgres } from '@flotilla/testing';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const LAUNCHER = path.join(ROOT, 'dist', 'tools', 'launcher.js');

interface Launched {
  child: ChildProcess;
  socket: string;
  stderr: () => string;
  exited: Promise<number | null>;
}

async function launch(home: string, env: NodeJS.ProcessEnv = {}): Promise<Launched> {
  const child = spawn(process.execPath, ['--enable-source-maps', LAUNCHER], {
    env: { ...process.env, FLOTILLA_HOME: home, FLOTILLA_NODE_ID: 'launcher-test', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const socket = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ready line in 90 s; stderr:\n${stderr}`)), 90_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      const m = /^ready: (.+)\n/.exec(stdout);
      if (m) {
        clearTimeout(t);
        resolve(m[1]!);
      }
    });
    void exited.then((code) => reject(new Error(`launcher exited (${code}) before ready; stderr:\n${stderr}`)));
  });
  return { child, socket, stderr: () => stderr, exited };
}

/** Pids whose parent is `ppid`, with their command lines. */
async function childrenOf(ppid: number): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  for (const e of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const stat = await fs.readFile(`/proc/${e}/stat`, 'utf8').catch(() => '');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[1]) === ppid) out.set(Number(e), (await fs.readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ').trim());
  }
  return out;
}

/**
 * The launcher's children once every app has retitled itself. `ready` means the gateway
 * answers ctr; the other apps may still be loading their bundles then.
 */
async function appsUp(ppid: number): Promise<Map<number, string>> {
  for (const until = Date.now() + 20_000; ; await new Promise((r) => setTimeout(r, 100))) {
    const kids = await childrenOf(ppid);
    const cmdlines = [...kids.values()];
    if (APPS.every((app) => cmdlines.includes(`flotilla-${app}`)) || Date.now() > until) return kids;
  }
}

/** Running: exists and is not a zombie (an exited process init has not reaped yet). */
async function alive(pid: number): Promise<string | undefined> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  if (!stat || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return undefined;
  return stat;
}

/**
 * After a failed assertion: SIGTERM, so the launcher stops the apps and servers it started
 * in their own process groups (SIGKILL would leave them running); SIGKILL only if it hangs.
 */
async function stopLeftover(l: Launched): Promise<void> {
  if (l.child.exitCode !== null || l.child.signalCode !== null) return;
  l.child.kill('SIGTERM');
  const t = setTimeout(() => l.child.kill('SIGKILL'), 30_000);
  await l.exited;
  clearTimeout(t);
}

async function tempHome(): Promise<string> {
  const home = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-launcher-'));
  await fs.chmod(home, 0o755);
  return home;
}

test('launcher: ready line, restarts, and a clean stop with a task still running', async () => {
  const home = await tempHome();
  const l = await launch(path.join(home, 'h'));
  try {
    assert.equal(l.socket, path.join(home, 'h', 'containerd.sock'));
    assert.equal((await fs.readFile(`/proc/${l.child.pid}/cmdline`, 'utf8')).split('\0')[0], 'flotilla-launcher');
    const v = await ctr(l.socket, ['version']);
    assert.equal(v.code, 0, v.stderr);

    const kids = await appsUp(l.child.pid!);
    const cmdlines = [...kids.values()];
    for (const app of APPS) assert.ok(cmdlines.includes(`flotilla-${app}`), `flotilla-${app} not among ${cmdlines.join(' | ')}`);
    assert.ok(cmdlines.some((c) => c.startsWith('nats-server ')), 'nats-server not started');
    assert.ok(cmdlines.some((c) => c.includes('/postgres -D ')), 'postgres not started');
    for (const app of APPS) await fs.stat(path.join(home, 'h', 'logs', `${app}.log`));

    // Every app runs on the launcher's node, and npm test on the Node.js LTS npm installed
    // (package.json optionalDependencies) where there is one for this machine.
    const pinned = path.join(ROOT, 'node_modules', `node-linux-${process.arch}`, 'bin', 'node');
    if (await fs.stat(pinned).then(() => true, () => false)) assert.equal(await fs.realpath(process.execPath), await fs.realpath(pinned));
    const launcherExe = await fs.readlink(`/proc/${l.child.pid}/exe`);
    for (const [pid, c] of kids) if (c.startsWith('flotilla-')) assert.equal(await fs.readlink(`/proc/${pid}/exe`), launcherExe, c);
    assert.ok(l.stderr().includes(`"msg":"apps started"`) && l.stderr().includes(`"node":"${process.version}"`), 'the launcher logs the node the apps run on');

    // An app killed with -9 comes back, and the restart is logged.
    const contentPid = [...kids].find(([, c]) => c === 'flotilla-content')![0];
    process.kill(contentPid, 'SIGKILL');
    const until = Date.now() + 20_000;
    for (;;) {
      const now = [...(await childrenOf(l.child.pid!))].find(([, c]) => c === 'flotilla-content');
      if (now && now[0] !== contentPid) break;
      assert.ok(Date.now() < until, 'content was not restarted');
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(l.stderr(), /"msg":"app exited; restarting","app":"content".*"restarts":1/);
    assert.match(await fs.readFile(path.join(home, 'h', 'logs', 'content.log'), 'utf8'), /exited; restarting/);

    // A task left running when the stack stops is killed with its shim.
    const img = await buildBusyboxImage();
    let imp = await ctr(l.socket, ['images', 'import', img.archivePath]);
    for (let i = 0; imp.code !== 0 && i < 50; i++) {
      await new Promise((r) => setTimeout(r, 200)); // content restarting
      imp = await ctr(l.socket, ['images', 'import', img.archivePath]);
    }
    assert.equal(imp.code, 0, imp.stderr);
    const run = await ctr(l.socket, ['run', '-d', img.name, 'left-running', '/bin/sleep', '1000']);
    assert.equal(run.code, 0, run.stderr);
    const taskPid = Number((await ctr(l.socket, ['tasks', 'ls'])).stdout.match(/left-running\s+(\d+)/)?.[1]);
    assert.ok(taskPid > 0);
    const shims: number[] = [];
    for (const e of await fs.readdir('/proc')) {
      const cmd = await fs.readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
      if (cmd.startsWith('/usr/bin/containerd-shim-runc-v2') && cmd.includes(l.socket)) shims.push(Number(e));
    }
    assert.equal(shims.length, 1);

    const everything = [...(await childrenOf(l.child.pid!)).keys(), taskPid, ...shims];
    l.child.kill('SIGTERM');
    assert.equal(await l.exited, 0);
    for (const pid of everything) assert.equal(await alive(pid), undefined, `pid ${pid} still running`);
    await assert.rejects(fs.stat(l.socket), { code: 'ENOENT' });
    const mounts = await fs.readFile('/proc/self/mounts', 'utf8');
    assert.ok(!mounts.includes(home), `still mounted under ${home}`);
    // The cluster persists for the next start.
    await fs.stat(path.join(home, 'h', 'state', 'postgres', 'data', 'PG_VERSION'));
  } finally {
    await stopLeftover(l);
    await fs.rm(home, { recursive: true, force: true });
  }
});

test('launcher: NATS_URL and DATABASE_URL given are used, no servers of its own', async () => {
  const home = await tempHome();
  const nats = await startNats();
  const pg = await startPostgres();
  let l: Launched | undefined;
  try {
    l = await launch(path.join(home, 'h'), { NATS_URL: nats.url, DATABASE_URL: pg.url });
    const cmdlines = [...(await appsUp(l.child.pid!)).values()];
    assert.equal(cmdlines.length, APPS.length, cmdlines.join(' | '));
    assert.ok(cmdlines.every((c) => c.startsWith('flotilla-')), cmdlines.join(' | '));
    assert.equal((await ctr(l.socket, ['images', 'ls'])).code, 0);
    l.child.kill('SIGINT');
    assert.equal(await l.exited, 0);
    await assert.rejects(fs.stat(l.socket), { code: 'ENOENT' });
  } finally {
    if (l) await stopLeftover(l);
    await pg.stop();
    await nats.stop();
    await fs.rm(home, { recursive: true, force: true });
  }
});
