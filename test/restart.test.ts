// The restart monitor: a container labelled containerd.io/restart.status=running is started
// again after its task exits, its output appended to the restart.logpath label's file; set
// to stopped, its task is killed. Driven with the real ctr.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { buildBusyboxImage, startStack, testNamespace, type Stack, type TestImage } from '@flotilla/testing';

let stack: Stack;
let image: TestImage;

before(async () => {
  image = await buildBusyboxImage();
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
});

async function ok(ns: string, args: string[]): Promise<string> {
  const r = await stack.ctr(args, { namespace: ns });
  assert.equal(r.code, 0, `ctr ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

async function task(ns: string, id: string): Promise<{ pid: number; status: string } | undefined> {
  for (const line of (await ok(ns, ['tasks', 'ls'])).trim().split('\n').slice(1)) {
    const [tid, pid, status] = line.trim().split(/\s+/);
    if (tid === id) return { pid: Number(pid), status: status! };
  }
  return undefined;
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 90_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

test('a container labelled restart.status=running is restarted with its log path; stopped stops it', async (t) => {
  const ns = testNamespace(t.name);
  const log = path.join(stack.home, 'restart-logs', 'r1.log');
  await ok(ns, ['images', 'import', image.archivePath]);
  await ok(ns, ['run', '-d', '--label', 'containerd.io/restart.status=running', '--label', `containerd.io/restart.logpath=${log}`,
    image.name, 'r1', '/bin/sh', '-c', 'echo started $$; exec sleep 100000']);
  const first = (await task(ns, 'r1'))!;
  assert.equal(first.status, 'RUNNING');

  await ok(ns, ['tasks', 'kill', '-s', 'SIGKILL', 'r1']);
  const second = await until('r1 restarted', async () => {
    const t2 = await task(ns, 'r1');
    return t2 && t2.status === 'RUNNING' && t2.pid !== first.pid ? t2 : undefined;
  });
  assert.notEqual(second.pid, first.pid);
  // The restarted task's stdout goes to the log path (cio.LogFile's file:// URI).
  const text = await until('the log', async () => {
    const s = await fs.readFile(log, 'utf8').catch(() => '');
    return /^started \d+$/m.test(s) ? s : undefined;
  });
  assert.match(text, /^started 1$/m);

  // Desired status stopped: the monitor kills the task.
  await ok(ns, ['containers', 'label', 'r1', 'containerd.io/restart.status=stopped']);
  await until('r1 stopped by the monitor', async () => {
    const t3 = await task(ns, 'r1');
    return !t3 || t3.status === 'STOPPED';
  });
  await stack.ctr(['tasks', 'rm', 'r1'], { namespace: ns });
  await ok(ns, ['containers', 'rm', 'r1']);
});
