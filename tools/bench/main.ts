// npm run bench: flotilla and Debian's containerd 1.6.20 side by side in one run, the same
// workloads through the same real clients, interleaved round by round (which side goes
// first alternates), so load from others on the machine hits both alike. Prints median
// and spread per side and the ratio flotilla/containerd; writes benchmarks.json,
// benchmarks.svg and the generated section of benchmarks.md.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildBusyboxImage } from '@flotilla/testing';
import { parseArgs, USAGE } from './args.js';
import { measureGroups, PeakSampler, total, type GroupMemory } from './memory.js';
import { markdown, SCHEMA, spliceMarkdown, svgChart, textTable, type BenchResults, type MetricResult, type SideMemory, type SideResult } from './report.js';
import { cpuProfileEnv, SIDES, startContainerd, startFlotilla, type Side, type SideName } from './sides.js';
import { summarize } from './stats.js';
import { NAMESPACE, WORKLOADS, type BenchContext, type Workload } from './workloads.js';

const ROOT = path.resolve(__dirname, '..', '..');
const log = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function ok(side: Side, args: string[], namespace = NAMESPACE): Promise<string> {
  const r = await side.ctr(args, { namespace, timeoutMs: 5 * 60_000 });
  if (r.code !== 0) throw new Error(`${side.name}: ctr ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

async function serverVersion(side: Side): Promise<string> {
  const out = await ok(side, ['version']);
  return /Server:\s*\n\s*Version:\s*(\S+)/.exec(out)?.[1] ?? 'unknown';
}

function commit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

async function memoryNow(side: Side): Promise<GroupMemory[]> {
  return measureGroups(await side.processes());
}

interface Collected {
  samples: Record<SideName, number[]>;
  error: Partial<Record<SideName, string>>;
}

async function runWorkload(wl: Workload, rounds: number, sides: Record<SideName, Side>, ctx: BenchContext): Promise<Map<string, Collected>> {
  const got = new Map<string, Collected>(wl.metrics.map((m) => [m.id, { samples: { flotilla: [], containerd: [] }, error: {} }]));
  const failed: Partial<Record<SideName, string>> = {};
  for (let r = 0; r < rounds; r++) {
    await wl.beforeRound?.(ctx, r);
    const order: SideName[] = r % 2 === 0 ? ['flotilla', 'containerd'] : ['containerd', 'flotilla'];
    for (const name of order) {
      if (failed[name]) continue;
      try {
        const out = await wl.round(sides[name], r, ctx);
        for (const [id, s] of Object.entries(out)) got.get(id)?.samples[name].push(...s);
        log(`${wl.name} round ${r + 1}/${rounds} ${name}: ${Object.entries(out).map(([id, s]) => `${id}=${s.map((v) => v.toFixed(3)).join(',')}`).join(' ')}`);
      } catch (err) {
        // A side that fails once is not asked again for this workload: its result is the error.
        failed[name] = err instanceof Error ? err.message : String(err);
        log(`${wl.name} round ${r + 1}/${rounds} ${name} FAILED: ${failed[name]}`);
      }
    }
    await wl.afterRound?.(ctx, r, SIDES.map((n) => sides[n])).catch((err) => log(`${wl.name} cleanup after round ${r + 1}: ${err}`));
  }
  for (const c of got.values()) for (const n of SIDES) if (failed[n]) c.error[n] = failed[n];
  return got;
}

function metricResult(wl: Workload, m: Workload['metrics'][number], c: Collected, rounds: number, ctx: BenchContext): MetricResult {
  const side = (n: SideName): SideResult => (c.error[n] !== undefined || c.samples[n].length === 0 ? { error: c.error[n] ?? 'no samples', samples: c.samples[n] } : summarize(c.samples[n]));
  const flotilla = side('flotilla');
  const containerd = side('containerd');
  const res: MetricResult = {
    id: m.id,
    workload: wl.name,
    label: m.label,
    description: wl.description(ctx),
    unit: 's',
    rounds,
    flotilla,
    containerd,
    target: m.target,
    bytes: wl.bytes?.(ctx),
    status: 'measured',
  };
  if (flotilla.error === undefined && containerd.error === undefined) {
    res.ratio = flotilla.median / containerd.median;
    if (m.target !== undefined) res.meetsTarget = res.ratio <= m.target;
  } else {
    res.status = 'not yet measurable';
    res.note = flotilla.error !== undefined ? `flotilla: ${flotilla.error}` : `containerd: ${containerd.error}`;
  }
  return res;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.help) return void process.stdout.write(USAGE);
  if (args.list) {
    for (const w of WORKLOADS) process.stdout.write(`${w.name.padEnd(20)} ${w.description({ quick: false, tmp: '', busybox: { name: '<busybox>' } as BenchContext['busybox'] })}\n`);
    return;
  }
  const unknown = args.only.filter((n) => !WORKLOADS.some((w) => w.name === n));
  if (unknown.length) throw new Error(`unknown workload(s) ${unknown.join(', ')}; known: ${WORKLOADS.map((w) => w.name).join(', ')}`);
  const selected = args.only.length ? WORKLOADS.filter((w) => args.only.includes(w.name)) : [...WORKLOADS];
  if (!(await fs.stat(path.join(ROOT, 'dist', 'apps', 'gateway', 'main.js')).then(() => true, () => false))) throw new Error('dist/ is missing: run npm run build first');

  const outDir = path.resolve(args.out ?? (args.quick ? await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-bench-out-')) : path.join(ROOT, 'docs')));
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-bench-'));
  const loadavgStart = os.loadavg();
  const date = new Date().toISOString();
  const ctx: BenchContext = { quick: args.quick, tmp, busybox: await buildBusyboxImage() };
  const rounds = new Map(selected.map((w) => [w.name, args.rounds ?? w.defaultRounds(args.quick)]));
  for (const w of selected) {
    if (!w.prepare) continue;
    log(`preparing ${w.name}`);
    await w.prepare(ctx, rounds.get(w.name)!);
  }

  const flotillaEnv = args.cpuProf ? await cpuProfileEnv(args.cpuProf) : undefined;
  log('starting flotilla and containerd');
  const started = await Promise.allSettled([startFlotilla({ env: flotillaEnv }), startContainerd()]);
  const stops = started.filter((s): s is PromiseFulfilledResult<Side> => s.status === 'fulfilled').map((s) => s.value);
  // Ctrl-C or SIGTERM: stop both sides (no daemon, shim or mount left behind), then exit.
  const onSignal = (sig: NodeJS.Signals) => {
    log(`${sig}: stopping both sides`);
    void Promise.all(stops.map((s) => s.stop().catch(() => {}))).finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  const sampler = new PeakSampler(new Map(stops.map((s) => [s.name, (table) => s.processes(table)])));
  try {
    for (const s of started) if (s.status === 'rejected') throw s.reason;
    const sides = Object.fromEntries(stops.map((s) => [s.name, s])) as Record<SideName, Side>;
    const versions = { flotilla: await serverVersion(sides.flotilla), containerd: await serverVersion(sides.containerd) };
    for (const n of SIDES) {
      await ok(sides[n], ['images', 'import', ctx.busybox.archivePath]);
      await ok(sides[n], ['run', '--rm', ctx.busybox.name, 'warm-up', '/bin/true']);
    }
    await sleep(3000);
    const idle = Object.fromEntries(await Promise.all(SIDES.map(async (n) => [n, await memoryNow(sides[n])] as const))) as Record<SideName, GroupMemory[]>;
    sampler.start();

    const metrics: MetricResult[] = [];
    for (const w of selected) {
      log(`workload ${w.name}: ${rounds.get(w.name)} rounds`);
      const got = await runWorkload(w, rounds.get(w.name)!, sides, ctx);
      for (const m of w.metrics) metrics.push(metricResult(w, m, got.get(m.id)!, rounds.get(w.name)!, ctx));
    }
    await sampler.sample();
    sampler.stop();
    const end = Object.fromEntries(await Promise.all(SIDES.map(async (n) => [n, await memoryNow(sides[n])] as const))) as Record<SideName, GroupMemory[]>;
    const sideMemory = (n: SideName): SideMemory => {
      const t = total(idle[n]);
      const p = sampler.peak.get(n) ?? { rssKiB: 0, pssKiB: 0 };
      return { idle: idle[n], idleTotal: { rssKiB: t.rssKiB, pssKiB: t.pssKiB }, peakSampled: { rssKiB: Math.max(p.rssKiB, t.rssKiB), pssKiB: Math.max(p.pssKiB, t.pssKiB) }, end: end[n] };
    };
    const fm = sideMemory('flotilla');
    const cm = sideMemory('containerd');
    const results: BenchResults = {
      schema: SCHEMA,
      date,
      quick: args.quick,
      options: { only: args.only, rounds: args.rounds },
      host: { cpus: os.cpus().length, kernel: os.release(), node: process.version, loadavgStart, loadavgEnd: os.loadavg(), commit: commit() },
      versions,
      metrics,
      memory: {
        flotilla: fm,
        containerd: cm,
        ratio: { idleRss: fm.idleTotal.rssKiB / cm.idleTotal.rssKiB, idlePss: fm.idleTotal.pssKiB / cm.idleTotal.pssKiB, peakRss: fm.peakSampled.rssKiB / cm.peakSampled.rssKiB, peakPss: fm.peakSampled.pssKiB / cm.peakSampled.pssKiB },
      },
    };

    await fs.mkdir(outDir, { recursive: true });
    await fs.writeFile(path.join(outDir, 'benchmarks.json'), JSON.stringify(results, null, 2) + '\n');
    await fs.writeFile(path.join(outDir, 'benchmarks.svg'), svgChart(results));
    const mdPath = path.join(outDir, 'benchmarks.md');
    const existing = await fs.readFile(mdPath, 'utf8').catch(() => undefined);
    await fs.writeFile(mdPath, spliceMarkdown(existing, markdown(results, 'benchmarks.svg')));
    process.stdout.write(`${textTable(results)}\n\nwritten: ${path.join(outDir, 'benchmarks.json')}, benchmarks.svg, benchmarks.md\n`);
  } finally {
    sampler.stop();
    log('stopping');
    await Promise.all(stops.map((s) => s.stop().catch((err) => log(`stopping ${s.name}: ${err}`))));
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
