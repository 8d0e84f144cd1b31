// Container lists alone, side by side: N containers created once on each side (Go client),
// then `ROUNDS` runs of the Go client listing them `REP` times, alternating which side goes
// first; prints both medians, the ratio and every sample. For A/B work on the list path:
// the bench's containers-10k measures three lists per freshly created namespace, this one
// many lists of one namespace (a warm path). Environment: N (10000), ROUNDS (6), REP (5);
// PROF=<dir> profiles the apps (SIGUSR2-delimited --cpu-prof); PERF=1 starts them with
// --perf-basic-prof and PAUSE=1 waits for SIGUSR1 after the warm-up lists, printing the
// process groups (`GROUPS <json>`) so that perf samples can be told apart:
//   PERF=1 PAUSE=1 node --import tsx tools/bench/lists.ts > out &
//   perf record -a -g -e cpu-clock -- sh -c 'kill -USR1 <pid>; while kill -0 <pid>; do sleep 0.5; done'
import fs from 'node:fs/promises';
import { buildGoTest, runGoTest } from '@flotilla/testing';
import { cpuProfileEnv, startContainerd, startFlotilla } from './sides.js';

const N = Number(process.env.N ?? 10000);
const ROUNDS = Number(process.env.ROUNDS ?? 6);
const REP = Number(process.env.REP ?? 5);

async function main(): Promise<void> {
  const bin = await buildGoTest('bench');
  const env = process.env.PROF ? await cpuProfileEnv(process.env.PROF, { signal: true }) : process.env.PERF ? { NODE_OPTIONS: '--perf-basic-prof' } : {};
  const fl = await startFlotilla({ env });
  const cd = await startContainerd();
  const go = async (socket: string, phases: string): Promise<{ list_s?: number[] }> => {
    const r = await runGoTest(bin, ['-test.run=^TestContainers$'], { BENCH_ADDRESS: socket, BENCH_NAMESPACE: 'lists', BENCH_COUNT: String(N), BENCH_PHASES: phases, BENCH_LIST_REPEAT: String(REP) }, 20 * 60_000);
    const line = /^BENCHJSON (.*)$/m.exec(r.output)?.[1];
    if (r.code !== 0 || !line) throw new Error(r.output.trim().split('\n').slice(-6).join(' | '));
    return JSON.parse(line);
  };
  try {
    for (const s of [fl, cd]) await go(s.socket, 'create');
    for (const s of [fl, cd]) await go(s.socket, 'list'); // warm-up
    if (process.env.PAUSE) {
      console.log('READY', fl.socket, cd.socket);
      console.log('GROUPS', JSON.stringify([...(await fl.processes()), ...(await cd.processes()).map((g) => ({ ...g, name: `cd-${g.name}` }))]));
      await new Promise((resolve) => process.once('SIGUSR1', resolve));
    }
    const a: number[] = [];
    const b: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? [fl, cd] : [cd, fl];
      for (const s of order) (s === fl ? a : b).push(...((await go(s.socket, 'list')).list_s ?? []));
    }
    const median = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1]!;
    const ms = (x: number) => +(x * 1000).toFixed(1);
    console.log(JSON.stringify({ flotilla_ms: ms(median(a)), containerd_ms: ms(median(b)), ratio: +(median(a) / median(b)).toFixed(3), flotilla: a.map(ms), containerd: b.map(ms) }));
  } finally {
    await fl.stop();
    await cd.stop();
    // --perf-basic-prof also makes each app write an (empty) isolate-*-v8.log into its cwd.
    if (process.env.PERF) for (const f of await fs.readdir('.')) if (/^isolate-0x[0-9a-f]+-\d+-v8\.log$/.test(f)) await fs.rm(f, { force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
