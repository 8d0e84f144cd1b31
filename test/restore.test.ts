// Live restore: kill -9 the node agent, the tasks service and the gateway — separately and
// all together — while containers run. The containers keep running with the same pids;
// afterwards ctr shows them RUNNING and Wait, Kill, Exec and Delete work on them; a
// container that exited during an outage reports its exit exactly once; a shim that died
// is cleaned up with /tasks/exit and /tasks/delete; a ctr run waiting across an agent or
// tasks restart still gets its exit status.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect, type NatsConnection } from 'nats';
import { events as ev, evTask } from '@flotilla/api';
import type { AppName } from '@flotilla/launcher';
import { buildBusyboxImage, shimOf, startStack, testNamespace, type CtrResult, type Stack, type TestImage } from '@flotilla/testing';

let stack: Stack;
let image: TestImage;
let nc: NatsConnection;
/** Every /tasks/exit and /tasks/delete published, straight from NATS (outlives gateway restarts). */
const seen: { topic: string; namespace: string; containerId: string; id: string; pid: number; exitStatus: number }[] = [];

before(async () => {
  image = await buildBusyboxImage();
  stack = await startStack();
  nc = await connect({ servers: stack.env.NATS_URL! });
  nc.subscribe('flotilla.v1.events.tasks.>', {
    callback: (err, m) => {
      if (err) return;
      const env = ev.Envelope.decode(m.data);
      if (env.topic === '/tasks/exit') {
        const e = evTask.TaskExit.decode(env.event!.value);
        seen.push({ topic: env.topic, namespace: env.namespace, containerId: e.containerId, id: e.id, pid: e.pid, exitStatus: e.exitStatus });
      } else if (env.topic === '/tasks/delete') {
        const e = evTask.TaskDelete.decode(env.event!.value);
        seen.push({ topic: env.topic, namespace: env.namespace, containerId: e.containerId, id: e.id, pid: e.pid, exitStatus: e.exitStatus });
      }
    },
  });
});

after(async () => {
  await nc?.close();
  await stack?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}${last ? `: ${last}` : ''}`);
    await sleep(150);
  }
}

async function ok(ns: string, args: string[]): Promise<string> {
  const r = await stack.ctr(args, { namespace: ns });
  assert.equal(r.code, 0, `ctr ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

async function tasks(ns: string): Promise<Record<string, { pid: number; status: string }>> {
  const out: Record<string, { pid: number; status: string }> = {};
  for (const line of (await ok(ns, ['tasks', 'ls'])).trim().split('\n').slice(1)) {
    const [id, pid, status] = line.trim().split(/\s+/);
    if (id) out[id] = { pid: Number(pid), status: status! };
  }
  return out;
}

/** Whether the process runs (a zombie waiting for its reaper does not). */
function alive(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
}

/** kill -9 the apps, then wait until each runs again (a new pid) and tasks answer. */
async function killApps(apps: AppName[], ns: string, duringOutage?: () => Promise<void>): Promise<void> {
  const old = stack.supervisor.pids();
  for (const app of apps) process.kill(old[app]!, 'SIGKILL');
  await duringOutage?.();
  for (const app of apps) {
    await until(`${app} restarted`, async () => {
      const p = stack.supervisor.pids()[app];
      return p !== undefined && p !== old[app];
    });
  }
  await until('tasks ls after the restart', async () => (await stack.ctr(['tasks', 'ls'], { namespace: ns })).code === 0);
}

test('containers survive kill -9 of agent, tasks and gateway; exits are reported once; dead shims are cleaned up', async (t) => {
  const ns = testNamespace(t.name);
  await ok(ns, ['images', 'import', image.archivePath]);
  for (const id of ['a', 'b', 'd', 'e']) await ok(ns, ['run', '-d', image.name, id, '/bin/sleep', '100000']);
  // ctr run waits (Wait before Start) across restarts of the agent and the tasks service.
  const waiting: Promise<CtrResult> = stack.ctr(['run', '--rm', image.name, 'w', '/bin/sleep', '100000'], { namespace: ns, timeoutMs: 600_000 });
  await until('w running', async () => (await tasks(ns)).w?.status === 'RUNNING');
  const before = await tasks(ns);
  const keep = { a: before.a!.pid, b: before.b!.pid };

  const stillRunning = async (label: string) => {
    const now = await tasks(ns);
    for (const [id, pid] of Object.entries(keep)) {
      assert.ok(alive(pid), `${label}: ${id}'s process ${pid} is gone`);
      assert.deepEqual(now[id], { pid, status: 'RUNNING' }, `${label}: ${id} in ctr tasks ls`);
    }
  };

  // An exec process in a, to be killed during the first outage.
  await ok(ns, ['tasks', 'exec', '-d', '--exec-id', 'x1', 'a', '/bin/sleep', '100000']);
  const x1pid = (await ok(ns, ['tasks', 'ps', 'a'])).trim().split('\n').slice(1).map((l) => Number(l.trim().split(/\s+/)[0])).find((p) => p !== keep.a)!;
  assert.ok(x1pid > 0);

  // 1. The node agent. Meanwhile e's process and a's exec are killed and d's shim dies.
  const dShim = await shimOf(stack.socket, ns, 'd');
  await killApps(['node-agent'], ns, async () => {
    process.kill(before.e!.pid, 'SIGKILL');
    process.kill(x1pid, 'SIGKILL');
    process.kill(dShim, 'SIGKILL');
  });
  await stillRunning('after the agent');
  await until('e reported stopped', async () => (await tasks(ns)).e?.status === 'STOPPED');
  await until('d cleaned up', async () => !(await tasks(ns)).d && seen.some((s) => s.topic === '/tasks/delete' && s.containerId === 'd'));
  assert.ok(!alive(before.d!.pid), "d's container process outlived the cleanup of its shim");
  // The exit of w reaches the ctr run that has waited since before the restart.
  process.kill(before.w!.pid, 'SIGKILL');
  const w = await waiting;
  assert.equal(w.code, 137, w.stderr);

  // 2. The tasks service, with a Wait held across it.
  await ok(ns, ['run', '-d', image.name, 'w2', '/bin/sleep', '100000']);
  const w2pid = (await tasks(ns)).w2!.pid;
  const waiting3 = stack.ctr(['run', '--rm', image.name, 'w3', '/bin/sleep', '100000'], { namespace: ns, timeoutMs: 600_000 });
  const w3pid = (await until('w3 running', async () => (await tasks(ns)).w3)).pid;
  await killApps(['tasks'], ns);
  await stillRunning('after tasks');
  process.kill(w3pid, 'SIGKILL');
  const w3 = await waiting3;
  assert.equal(w3.code, 137, w3.stderr);

  // 3. The gateway.
  await killApps(['gateway'], ns);
  await stillRunning('after the gateway');

  // 4. All three together.
  await killApps(['node-agent', 'tasks', 'gateway'], ns, async () => {
    process.kill(w2pid, 'SIGKILL');
  });
  await stillRunning('after all three');
  await until('w2 reported stopped', async () => (await tasks(ns)).w2?.status === 'STOPPED');

  // Exec, Kill, Wait and Delete work on the survivors.
  assert.equal(await ok(ns, ['tasks', 'exec', '--exec-id', 'after', 'a', '/bin/echo', 'still here']), 'still here\n');
  await ok(ns, ['tasks', 'kill', '-s', 'SIGKILL', 'b']);
  await until('b stopped', async () => (await tasks(ns)).b?.status === 'STOPPED');
  for (const id of ['b', 'e', 'w2']) {
    const rm = await stack.ctr(['tasks', 'rm', id], { namespace: ns });
    assert.equal(rm.code, 0, rm.stderr);
    assert.match(rm.stderr, /exit code 137/);
  }
  assert.deepEqual(Object.keys(await tasks(ns)).sort(), ['a']);

  // A shim dying under a running agent: exit and delete, and the task is gone.
  const aShim = await shimOf(stack.socket, ns, 'a');
  process.kill(aShim, 'SIGKILL');
  await until('a cleaned up', async () => !(await tasks(ns)).a && seen.some((s) => s.topic === '/tasks/delete' && s.containerId === 'a'));
  assert.ok(!alive(keep.a), "a's container process outlived the cleanup of its shim");
  // Its container can run a task again.
  await ok(ns, ['tasks', 'start', '-d', 'a']);
  assert.equal((await tasks(ns)).a?.status, 'RUNNING');
  await ok(ns, ['tasks', 'kill', '-s', 'SIGKILL', 'a']);

  // Exactly once: past the shims' redelivery horizon (they retry a failed forward for
  // 1+2+...+6 s), each exit of the outages was published one time.
  await sleep(22_000);
  const exits = (id: string) => seen.filter((s) => s.namespace === ns && s.topic === '/tasks/exit' && s.containerId === id && s.id === id);
  for (const [id, pid] of [['e', before.e!.pid], ['w', before.w!.pid], ['w2', w2pid]] as const) {
    assert.equal(exits(id).length, 1, `${id}: ${JSON.stringify(exits(id))}`);
    assert.deepEqual([exits(id)[0]!.pid, exits(id)[0]!.exitStatus], [pid, 137], id);
  }
  const x1 = seen.filter((s) => s.namespace === ns && s.topic === '/tasks/exit' && s.containerId === 'a' && s.id === 'x1');
  assert.equal(x1.length, 1, JSON.stringify(x1));
  assert.deepEqual([x1[0]!.pid, x1[0]!.exitStatus], [x1pid, 137]);
  // The dead shims' tasks: one exit and one delete each, for the process that ran.
  for (const [id, pid] of [['d', before.d!.pid], ['a', keep.a]] as const) {
    const del = seen.filter((s) => s.namespace === ns && s.topic === '/tasks/delete' && s.containerId === id && s.pid === pid);
    assert.equal(del.length, 1, `${id}: ${JSON.stringify(seen.filter((s) => s.containerId === id))}`);
    assert.equal(exits(id).filter((s) => s.pid === pid).length, 1, `${id}: ${JSON.stringify(exits(id))}`);
  }
});
