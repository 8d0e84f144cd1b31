// Spawner: programs started through its long-lived shell get their arguments, cwd,
// environment and stdin exactly, report stdout, stderr and exit status, are killed at their
// timeout, and are not children of this process.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Spawner, shQuote } from '@flotilla/runtime';

let dir: string;
let sp: Spawner;

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'spawner-test-'));
  sp = new Spawner(path.join(dir, 'spawn'));
});

after(async () => {
  sp.close();
  await fs.rm(dir, { recursive: true, force: true });
});

const script = 'printf "%s|" "$@"; echo; pwd; echo "$FOO"; cat; echo oops >&2; exit 7';

test('arguments, cwd, environment and stdin arrive as given; stdout, stderr and status come back', async () => {
  const odd = ["it's", 'a b', '$HOME', '"q"', '`x`', '\\', '*', ''];
  const r = await sp.run('/bin/sh', ['-c', script, 'sh', ...odd], {
    cwd: dir,
    env: { FOO: "bar 'baz' $PATH" },
    stdin: Buffer.from('from stdin\n'),
    timeoutMs: 10_000,
  });
  assert.equal(r.error, undefined);
  assert.equal(r.code, 7);
  assert.equal(r.stdout.toString(), `${odd.join('|')}|\n${await fs.realpath(dir)}\nbar 'baz' $PATH\nfrom stdin\n`);
  assert.equal(r.stderr, 'oops\n');
  const own = readdirSync(path.join(dir, 'spawn'));
  assert.deepEqual(own, [`${process.pid}-1`]);
  assert.deepEqual(readdirSync(path.join(dir, 'spawn', own[0]!)), [], 'its files are removed');
});

test('a program is started by the shell, not forked from this process', async () => {
  const r = await sp.run('/bin/sh', ['-c', 'echo $PPID'], { timeoutMs: 10_000 });
  assert.equal(r.code, 0);
  const ppid = Number(r.stdout.toString());
  assert.ok(ppid > 0);
  assert.notEqual(ppid, process.pid);
});

test('binaries are found on PATH; a missing one is ENOENT', async () => {
  const r = await sp.run('true', [], { timeoutMs: 10_000 });
  assert.equal(r.code, 0);
  assert.equal(sp.lookPath('true')?.startsWith('/'), true);
  const missing = await sp.run('no-such-binary-flotilla', [], { timeoutMs: 10_000 });
  assert.equal(missing.error?.code, 'ENOENT');
  const gone = await sp.run(path.join(dir, 'no-such-binary'), [], { timeoutMs: 10_000 });
  assert.equal(gone.error?.code, 'ENOENT');
});

test('a program past its timeout is killed (SIGKILL: 137)', async () => {
  const t0 = Date.now();
  const r = await sp.run('sleep', ['30'], { timeoutMs: 200 });
  assert.equal(r.code, 137);
  assert.ok(Date.now() - t0 < 10_000);
});

test('concurrent programs keep their own answers', async () => {
  const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => sp.run('/bin/sh', ['-c', `sleep 0.0${i % 5}; echo ${i}; exit ${i}`], { timeoutMs: 10_000 })));
  rs.forEach((r, i) => {
    assert.equal(r.code, i);
    assert.equal(r.stdout.toString(), `${i}\n`);
  });
});

test('an argument with a newline is carried too (spawned directly)', async () => {
  const r = await sp.run('/bin/sh', ['-c', 'printf "%s" "$1"', 'sh', 'a\nb'], { timeoutMs: 10_000 });
  assert.equal(r.code, 0);
  assert.equal(r.stdout.toString(), 'a\nb');
});

test('shQuote survives sh', async () => {
  const s = `a'b"c$d\`e\\f`;
  const r = await sp.run('/bin/sh', ['-c', `printf %s ${shQuote(s)}`], { timeoutMs: 10_000 });
  assert.equal(r.stdout.toString(), s);
});

/** Our children whose command line contains `text`. */
function childrenWith(text: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid && readFileSync(`/proc/${e}/cmdline`, 'latin1').includes(text)) out.push(Number(e));
    } catch {
      // gone
    }
  }
  return out;
}

test('when the shell dies, waiting runs fail and their programs are killed; the next run starts a new shell', async () => {
  const marker = path.join(dir, 'marker');
  const waiting = sp.run('/bin/sh', ['-c', `sleep 0.3; touch ${marker}`], { timeoutMs: 10_000 });
  await new Promise((r) => setTimeout(r, 100));
  const shells = childrenWith('read -r line');
  assert.equal(shells.length, 1, 'one shell');
  process.kill(shells[0]!, 'SIGKILL');
  const r = await waiting;
  assert.equal(r.error?.message, 'spawner shell exited');
  await new Promise((res) => setTimeout(res, 500));
  await assert.rejects(fs.stat(marker), { code: 'ENOENT' }, 'the program was killed');
  const again = await sp.run('/bin/sh', ['-c', 'echo again'], { timeoutMs: 10_000 });
  assert.equal(again.stdout.toString(), 'again\n');
  assert.equal(childrenWith('read -r line').length, 1);
});

test("a new spawner on the same directory removes dead processes' files, never a live one's nor another's", async () => {
  const stale = path.join(dir, 'spawn', '999999999-1');
  mkdirSync(stale);
  // Not of a spawner's naming: kept (a directory shared by mistake, /tmp say, loses nothing).
  mkdirSync(path.join(dir, 'spawn', 'not-ours'));
  writeFileSync(path.join(dir, 'spawn', '999999999'), 'x');
  const other = new Spawner(path.join(dir, 'spawn'));
  try {
    assert.equal((await other.run('true', [], { timeoutMs: 10_000 })).code, 0);
    assert.deepEqual(readdirSync(path.join(dir, 'spawn')).sort(), [`${process.pid}-1`, `${process.pid}-2`, '999999999', 'not-ours']);
    assert.equal((await sp.run('true', [], { timeoutMs: 10_000 })).code, 0, 'the first still works');
  } finally {
    other.close();
  }
});
