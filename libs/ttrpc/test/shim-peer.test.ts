// The real peer: our client drives Debian's containerd-shim-runc-v2 (Go ttrpc) and our
// server receives what the shim's Go ttrpc client sends. No container is created here;
// @flotilla/runtime's tests run full tasks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { constants as fsc, openSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Empty, shim as sapi } from '@flotilla/api';
import { ErrorClass } from '@flotilla/errdefs';
import { TtrpcClient, TtrpcServer } from '@flotilla/ttrpc';

const TASK = 'containerd.task.v2.Task';

function run(cmd: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv }): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('our ttrpc client talks to containerd-shim-runc-v2, and its events client to our server', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ttrpc-shim-'));
  const ns = `ttrpc-peer-${process.pid}`;
  const id = 'peer';
  const bundle = path.join(dir, ns, id);
  await fs.mkdir(bundle, { recursive: true });
  // The shim's start reads config.json (for grouping annotations) from its cwd.
  await fs.writeFile(path.join(bundle, 'config.json'), '{}');
  // The shim writes its log to the FIFO "log" in its cwd; the parent creates and drains it.
  const logPath = path.join(bundle, 'log');
  const mk = await run('mkfifo', ['-m', '0700', logPath], { cwd: dir, env: process.env });
  assert.equal(mk.code, 0, mk.out);
  const logSock = new net.Socket({ fd: openSync(logPath, fsc.O_RDWR | fsc.O_NONBLOCK), readable: true, writable: false });
  logSock.resume();

  // The shim's event publisher dials TTRPC_ADDRESS at start: our server must be up.
  const events = new TtrpcServer();
  const forwards: { metadata: Record<string, string>; bytes: number }[] = [];
  events.register('containerd.services.events.ttrpc.v1.Events', 'Forward', async (p, ctx) => {
    forwards.push({ metadata: ctx.metadata, bytes: p.length });
    return Empty.encode({}).finish();
  });
  const eventsSock = path.join(dir, 'events.sock');
  await events.listen(eventsSock);

  const grpcAddress = path.join(dir, 'containerd.sock');
  const started = await run('containerd-shim-runc-v2', ['-namespace', ns, '-address', grpcAddress, '-publish-binary', '/bin/false', '-id', id, 'start'], {
    cwd: bundle,
    env: { ...process.env, GOMAXPROCS: '2', TTRPC_ADDRESS: eventsSock },
  });
  assert.equal(started.code, 0, started.out);
  const address = started.out.trim();
  t.after(async () => {
    logSock.destroy();
    await events.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  // The shim listens on a filesystem socket (unix://<path>, not abstract), mode 0600, and
  // records the address in the bundle.
  assert.match(address, /^unix:\/\/\/run\/containerd\/s\/[0-9a-f]{64}$/);
  const sockPath = address.slice('unix://'.length);
  const st = await fs.lstat(sockPath);
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(await fs.readFile(path.join(bundle, 'address'), 'utf8'), address);

  const client = await TtrpcClient.connect(address);
  const md = { 'containerd-namespace-ttrpc': ns };
  const connect = sapi.ConnectResponse.decode(
    await client.call(TASK, 'Connect', sapi.ConnectRequest.encode({ id }).finish(), { metadata: md, timeoutMs: 5000 }),
  );
  assert.ok(connect.shimPid > 0);
  assert.ok(alive(connect.shimPid));

  // Concurrent calls on one connection, each answered on its own stream.
  const conns = await Promise.all(
    [1, 2, 3, 4].map(() => client.call(TASK, 'Connect', sapi.ConnectRequest.encode({ id }).finish(), { metadata: md })),
  );
  for (const c of conns) assert.equal(sapi.ConnectResponse.decode(c).shimPid, connect.shimPid);

  // Go ttrpc's statuses map to our error classes.
  await assert.rejects(client.call(TASK, 'NoSuchMethod', new Uint8Array(0)), {
    errorClass: ErrorClass.NotImplemented,
    message: 'method NoSuchMethod: not implemented',
  });
  await assert.rejects(client.call('containerd.task.v2.Nope', 'State', new Uint8Array(0)), { errorClass: ErrorClass.NotImplemented });
  // No container was created: State has nothing to report on.
  await assert.rejects(
    client.call(TASK, 'State', sapi.StateRequest.encode({ id, execId: '' }).finish(), { metadata: md }),
    { errorClass: ErrorClass.NotFound, message: 'container not created: not found' },
  );

  // Shutdown: the shim exits, closing the connection (pending calls then fail Unavailable).
  const closed = new Promise<void>((r) => client.onClose(r));
  await client
    .call(TASK, 'Shutdown', sapi.ShutdownRequest.encode({ id, now: false }).finish(), { metadata: md, timeoutMs: 3000 })
    .catch((err) => assert.equal(err.errorClass, ErrorClass.Unavailable));
  await closed;
  for (let i = 0; i < 100 && alive(connect.shimPid); i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(alive(connect.shimPid), false, 'shim exited');
  // The shim removes its socket as it goes.
  await assert.rejects(fs.lstat(sockPath), { code: 'ENOENT' });
  // Without a task the shim publishes nothing; @flotilla/runtime's tests check Forward.
  assert.deepEqual(forwards, []);
});
