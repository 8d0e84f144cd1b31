// Resident memory of everything one side started, read from /proc: per process VmRSS
// (now) and VmHWM (peak since it started), and Pss (shared pages split between sharers,
// so PostgreSQL's shared buffers are not counted once per backend) for the totals.
import { readdirSync, readFileSync } from 'node:fs';
import fs from 'node:fs/promises';

export interface ProcGroup {
  /** What it is: a flotilla app, `nats-server`, `postgresql`, `containerd`, `shims`. */
  name: string;
  pids: number[];
}

export interface GroupMemory {
  name: string;
  processes: number;
  rssKiB: number;
  hwmKiB: number;
  pssKiB: number;
}

async function statusKiB(pid: number): Promise<{ rss: number; hwm: number } | undefined> {
  const text = await fs.readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  if (!text) return undefined;
  const field = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

async function pssKiB(pid: number): Promise<number> {
  const text = await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => '');
  return Number(/^Pss:\s+(\d+) kB/m.exec(text)?.[1] ?? 0);
}

export async function measureGroups(groups: readonly ProcGroup[]): Promise<GroupMemory[]> {
  return Promise.all(
    groups.map(async (g) => {
      const out: GroupMemory = { name: g.name, processes: 0, rssKiB: 0, hwmKiB: 0, pssKiB: 0 };
      for (const pid of g.pids) {
        const s = await statusKiB(pid);
        if (!s) continue;
        out.processes++;
        out.rssKiB += s.rss;
        out.hwmKiB += s.hwm;
        out.pssKiB += await pssKiB(pid);
      }
      return out;
    }),
  );
}

export function total(groups: readonly GroupMemory[]): { rssKiB: number; pssKiB: number; hwmKiB: number } {
  return groups.reduce((a, g) => ({ rssKiB: a.rssKiB + g.rssKiB, pssKiB: a.pssKiB + g.pssKiB, hwmKiB: a.hwmKiB + g.hwmKiB }), { rssKiB: 0, pssKiB: 0, hwmKiB: 0 });
}

export interface ProcEntry {
  pid: number;
  ppid: number;
  argv: string[];
}

/**
 * Every /proc entry's argv and parent pid. Read synchronously: a few hundred tiny reads
 * take milliseconds this way, and hundreds of milliseconds of CPU as promises, which the
 * sampler would take from the systems it measures.
 */
export function processTable(): ProcEntry[] {
  const out: ProcEntry[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'latin1');
      const cmdline = readFileSync(`/proc/${e}/cmdline`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      out.push({ pid: Number(e), ppid, argv: cmdline.split('\0').filter(Boolean) });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Runtime v2 shims started with `-address <grpcAddress>` (one side's shims). */
export function shimsOf(table: readonly ProcEntry[], grpcAddress: string): number[] {
  return table
    .filter((p) => {
      if (!(p.argv[0] ?? '').split('/').pop()!.startsWith('containerd-shim')) return false;
      const i = p.argv.indexOf('-address');
      return i > 0 && p.argv[i + 1] === grpcAddress;
    })
    .map((p) => p.pid);
}

/** `pid` and all its descendants in `table`. */
export function withDescendants(table: readonly { pid: number; ppid: number }[], pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) for (const p of table) if (p.ppid === out[i]) out.push(p.pid);
  return out;
}

/**
 * Samples each side's groups every `intervalMs` (one /proc scan per tick) and keeps the largest simultaneous total
 * (RSS and PSS), which catches short-lived shims that VmHWM of surviving processes misses.
 */
export class PeakSampler {
  private timer?: NodeJS.Timeout;
  private busy = false;
  readonly peak = new Map<string, { rssKiB: number; pssKiB: number; at: string }>();

  constructor(private readonly sides: Map<string, (table: ProcEntry[]) => Promise<ProcGroup[]>>, private readonly intervalMs = 2000) {}

  start(): void {
    this.timer = setInterval(() => void this.sample(), this.intervalMs);
    this.timer.unref();
  }

  async sample(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const table = processTable();
      for (const [name, groups] of this.sides) {
        const t = total(await measureGroups(await groups(table)));
        const p = this.peak.get(name);
        if (!p || t.rssKiB > p.rssKiB) this.peak.set(name, { rssKiB: t.rssKiB, pssKiB: Math.max(t.pssKiB, p?.pssKiB ?? 0), at: new Date().toISOString() });
        else if (t.pssKiB > p.pssKiB) p.pssKiB = t.pssKiB;
      }
    } finally {
      this.busy = false;
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
