// preciseNow against a real nanosecond wall clock (Python's time.time_ns, CLOCK_REALTIME,
// answering over a pipe): with a fresh anchor each time, the real time read between two
// stamps must lie between them. containerd's content testsuite checks the same of every
// stamp; an anchor taken while the process was descheduled at the millisecond tick made
// stamps late by up to hundreds of microseconds (then 5 % of anchors on a loaded machine).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { preciseNow, reanchorClock } from '@flotilla/api';

test('stamps from fresh anchors bracket the real time read between them', async () => {
  const py = spawn('python3', ['-u', '-c', 'import sys, time\nfor _ in sys.stdin:\n    print(time.time_ns(), flush=True)'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: py.stdout! })[Symbol.asyncIterator]();
  const outside: string[] = [];
  try {
    for (let i = 0; i < 300; i++) {
      reanchorClock();
      const a = preciseNow();
      py.stdin!.write('\n');
      const real = Number(BigInt((await lines.next()).value as string) / 1000n) / 1000; // ms, µs precision
      const b = preciseNow();
      if (real < a || real > b) outside.push(`${i}: ${a.toFixed(3)} ≤ ${real.toFixed(3)} ≤ ${b.toFixed(3)}`);
    }
  } finally {
    py.kill();
  }
  assert.deepEqual(outside, []);
});
