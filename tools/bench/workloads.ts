// The workloads, each run through real clients against both sides: ctr where a command
// is what users run, containerd's Go client (tools/gotest/src/flotilla/bench) where one
// ctr process per call would be most of what is measured.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { openSync, closeSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { buildGoTest, runGoTest, type TestImage } from '@flotilla/testing';
import { buildLayeredImage, type LayeredImage } from './image.js';
import type { Side } from './sides.js';

export interface MetricDef {
  id: string;
  label: string;
  /** Target for flotilla/containerd (issue 6), when there is one. */
  target?: number;
}

export interface BenchContext {
  quick: boolean;
  /** Scratch directory, removed after the run. */
  tmp: string;
  /** The busybox image, imported and unpacked in NAMESPACE on both sides. */
  busybox: TestImage;
}

export const NAMESPACE = 'bench';

export interface Workload {
  name: string;
  description(ctx: BenchContext): string;
  defaultRounds(quick: boolean): number;
  metrics: MetricDef[];
  /** Bytes one sample moves, for a throughput column. */
  bytes?(ctx: BenchContext): number;
  /** Untimed set-up shared by both sides (build images, compile the Go client). */
  prepare?(ctx: BenchContext, rounds: number): Promise<void>;
  /** Untimed, before round `r` runs on either side. */
  beforeRound?(ctx: BenchContext, r: number): Promise<void>;
  /** One round on one side: samples (seconds) per metric id. Throws when the side fails. */
  round(side: Side, r: number, ctx: BenchContext): Promise<Record<string, number[]>>;
  afterRound?(ctx: BenchContext, r: number, sides: readonly Side[]): Promise<void>;
}

/** Runs ctr; resolves with its wall time in seconds, rejects with its stderr on failure. */
export function timedCtr(side: Side, args: string[], opts: { namespace?: string; stdinFile?: string; timeoutMs?: number } = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const stdin = opts.stdinFile ? openSync(opts.stdinFile, 'r') : 'ignore';
    const start = performance.now();
    const child = spawn('ctr', ['--address', side.socket, '--namespace', opts.namespace ?? NAMESPACE, ...args], { stdio: [stdin, 'ignore', 'pipe'] });
    if (typeof stdin === 'number') closeSync(stdin);
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 10 * 60_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(t);
      const s = (performance.now() - start) / 1000;
      if (code === 0) resolve(s);
      else reject(new Error(`ctr ${args.join(' ')}: ${signal ?? `exit ${code}`}: ${stderr.trim().slice(-500)}`));
    });
  });
}

let goBin: Promise<string> | undefined;
const goBench = () => (goBin ??= buildGoTest('bench'));

async function goWorkload(side: Side, test: string, env: Record<string, string>): Promise<Record<string, unknown>> {
  const r = await runGoTest(await goBench(), [`-test.run=^${test}$`], { BENCH_ADDRESS: side.socket, ...env }, 20 * 60_000);
  const line = /^BENCHJSON (.*)$/m.exec(r.output)?.[1];
  if (r.code !== 0 || !line) throw new Error(`${test}: ${r.output.trim().split('\n').slice(-6).join(' | ').slice(-600)}`);
  return JSON.parse(line) as Record<string, unknown>;
}

const MiB = 1024 * 1024;

const runRm: Workload = {
  name: 'run-rm',
  description: () => '`ctr run --rm <busybox> <id> /bin/true`, one at a time: wall time of each ctr',
  defaultRounds: (q) => (q ? 2 : 20),
  metrics: [{ id: 'run-rm', label: 'ctr run --rm', target: 1.0 }],
  async round(side, r, ctx) {
    return { 'run-rm': [await timedCtr(side, ['run', '--rm', ctx.busybox.name, `rr-${r}`, '/bin/true'])] };
  },
};

const CONCURRENT = 20;
const runRmConcurrent: Workload = {
  name: 'run-rm-concurrent',
  description: (ctx) => `${ctx.quick ? 4 : CONCURRENT} \`ctr run --rm\` started together: wall time until the last exits`,
  defaultRounds: (q) => (q ? 1 : 5),
  metrics: [{ id: 'run-rm-concurrent', label: `${CONCURRENT} concurrent ctr run --rm` }],
  async round(side, r, ctx) {
    const n = ctx.quick ? 4 : CONCURRENT;
    const start = performance.now();
    await Promise.all(Array.from({ length: n }, (_, i) => timedCtr(side, ['run', '--rm', ctx.busybox.name, `rc-${r}-${i}`, '/bin/true'])));
    return { 'run-rm-concurrent': [(performance.now() - start) / 1000] };
  },
};

function ingestSize(ctx: BenchContext): number {
  return ctx.quick ? 16 * MiB : 256 * MiB;
}
const ingestFile = (ctx: BenchContext, r: number) => path.join(ctx.tmp, `ingest-${r}.bin`);
const ingestDigests = new Map<number, string>();
const ingest: Workload = {
  name: 'ingest',
  description: (ctx) => `\`ctr content ingest\` of a ${ingestSize(ctx) / MiB} MiB random blob from a file (new content each round; expected size and digest given)`,
  defaultRounds: (q) => (q ? 1 : 5),
  metrics: [{ id: 'ingest', label: 'content ingest', target: 0.67 }],
  bytes: ingestSize,
  async beforeRound(ctx, r) {
    const size = ingestSize(ctx);
    const h = createHash('sha256');
    const fh = await fs.open(ingestFile(ctx, r), 'w');
    try {
      for (let off = 0; off < size; off += 4 * MiB) {
        const chunk = randomBytes(Math.min(4 * MiB, size - off));
        h.update(chunk);
        await fh.write(chunk);
      }
    } finally {
      await fh.close();
    }
    ingestDigests.set(r, `sha256:${h.digest('hex')}`);
  },
  async round(side, r, ctx) {
    const s = await timedCtr(side, ['content', 'ingest', '--expected-size', String(ingestSize(ctx)), '--expected-digest', ingestDigests.get(r)!, `bench-ingest-${r}`], {
      stdinFile: ingestFile(ctx, r),
    });
    return { ingest: [s] };
  },
  async afterRound(ctx, r, sides) {
    await fs.rm(ingestFile(ctx, r), { force: true });
    for (const side of sides) await side.ctr(['content', 'rm', ingestDigests.get(r)!], { namespace: NAMESPACE });
  },
};

const importShape = (ctx: BenchContext) => (ctx.quick ? { layers: 2, filesPerLayer: 2, fileSize: 1 * MiB } : { layers: 4, filesPerLayer: 10, fileSize: 5 * MiB });
const importImages = new Map<number, LayeredImage>();
const importUnpack: Workload = {
  name: 'import',
  description: (ctx) => {
    const s = importShape(ctx);
    return `\`ctr images import\` (with unpack, overlayfs) of a ${(s.layers * s.filesPerLayer * s.fileSize) / MiB} MiB image: ${s.layers} gzip layers of ${s.filesPerLayer} random files; a new image per round, in a new namespace`;
  },
  defaultRounds: (q) => (q ? 1 : 3),
  metrics: [{ id: 'import', label: 'import + unpack', target: 1.0 }],
  bytes: (ctx) => {
    const s = importShape(ctx);
    return s.layers * s.filesPerLayer * s.fileSize;
  },
  async prepare(ctx, rounds) {
    for (let r = 0; r < rounds; r++) importImages.set(r, await buildLayeredImage({ ...importShape(ctx), variant: r }));
  },
  async round(side, r) {
    return { import: [await timedCtr(side, ['images', 'import', importImages.get(r)!.archivePath], { namespace: `bench-import-${r}` })] };
  },
};

function containers(label: string, full: number, quick: number): Workload {
  const count = (ctx: BenchContext) => (ctx.quick ? quick : full);
  return {
    name: `containers-${label}`,
    description: (ctx) =>
      `Go client: create ${count(ctx)} containers (8 at a time), list them all 3 times (each list is a sample), delete them all (8 at a time); a new namespace per round`,
    defaultRounds: (q) => (q ? 1 : full >= 10_000 ? 2 : 3),
    metrics: [
      { id: `containers-${label}-create`, label: `create ${label} containers` },
      { id: `containers-${label}-list`, label: `list ${label} containers`, target: full >= 10_000 ? 1.0 : undefined },
      { id: `containers-${label}-delete`, label: `delete ${label} containers` },
    ],
    prepare: async () => void (await goBench()),
    async round(side, r, ctx) {
      const out = await goWorkload(side, 'TestContainers', {
        BENCH_NAMESPACE: `bench-ctrs-${label}-${r}`,
        BENCH_COUNT: String(count(ctx)),
        BENCH_WORKERS: '8',
        BENCH_LIST_REPEAT: '3',
      });
      return {
        [`containers-${label}-create`]: [out.create_s as number],
        [`containers-${label}-list`]: out.list_s as number[],
        [`containers-${label}-delete`]: [out.delete_s as number],
      };
    },
  };
}

const events: Workload = {
  name: 'events',
  description: (ctx) =>
    `Go client subscribed to /tasks/exit; ${ctx.quick ? 2 : 4} tasks of /bin/true per round: time from the shim's exited_at to the event reaching the subscriber, and from the event's publish timestamp`,
  defaultRounds: (q) => (q ? 1 : 5),
  metrics: [
    { id: 'events-exit', label: 'task exit -> subscriber' },
    { id: 'events-publish', label: 'event publish -> subscriber' },
  ],
  prepare: async () => void (await goBench()),
  async round(side, _r, ctx) {
    const out = await goWorkload(side, 'TestEventLatency', { BENCH_NAMESPACE: NAMESPACE, BENCH_IMAGE: ctx.busybox.name, BENCH_COUNT: String(ctx.quick ? 2 : 4) });
    return { 'events-exit': out.exit_to_subscriber_s as number[], 'events-publish': out.publish_to_subscriber_s as number[] };
  },
};

export const WORKLOADS: readonly Workload[] = [runRm, runRmConcurrent, ingest, importUnpack, containers('1k', 1000, 50), containers('10k', 10_000, 200), events];
