// When to collect: containerd's gc scheduler (gc/scheduler/scheduler.go). Deletions and
// mutations are counted; a deletion (with deletionThreshold 0) or mutationThreshold
// mutations make the next tick collect; an explicit request (a synchronous delete)
// collects after scheduleDelay and answers once that collection is done. Between
// collections the scheduler ticks every `interval`, which pauseThreshold keeps so that
// collecting takes at most that fraction of the time. Objects the grace period kept
// (gc.ts) make a tick collect again once they are old enough.
import type { GcStats } from './gc.js';
import type { ReleasedResource } from './leases.js';

export interface GcSchedulerOptions {
  /** Fraction of time collection may take (containerd: 0.02; clamped to [0, 0.5]). */
  pauseThreshold?: number;
  /** Deletions that trigger a collection (0: any deletion, at the next tick). */
  deletionThreshold?: number;
  /** Mutations that trigger a collection (containerd: 100; 0 disables). */
  mutationThreshold?: number;
  /** Delay before a triggered collection, ms (containerd: 0). */
  scheduleDelayMs?: number;
  /** First collection after start, ms (containerd: 100). */
  startupDelayMs?: number;
  log?: (msg: string, err?: unknown) => void;
}

export type Collect = (released: ReleasedResource[]) => Promise<GcStats>;

interface Waiter { resolve: (s: GcStats) => void; reject: (e: unknown) => void }

export class GcScheduler {
  private readonly pauseThreshold: number;
  private readonly deletionThreshold: number;
  private readonly mutationThreshold: number;
  private readonly scheduleDelay: number;
  private readonly startupDelay: number;
  private readonly log: (msg: string, err?: unknown) => void;

  private timer: NodeJS.Timeout | undefined;
  private nextCollection: number | undefined;
  private lastCollection: number | undefined;
  private interval = 1000;
  private gcTime = 0;
  private collections = 0;
  private triggered = false;
  private deletions = 0;
  private mutations = 0;
  private deferredUntil: number | undefined;
  private released: ReleasedResource[] = [];
  private waiters: Waiter[] = [];
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(private readonly collect: Collect, opts: GcSchedulerOptions = {}) {
    this.pauseThreshold = Math.min(Math.max(opts.pauseThreshold ?? 0.02, 0), 0.5);
    this.deletionThreshold = Math.max(opts.deletionThreshold ?? 0, 0);
    this.mutationThreshold = Math.max(opts.mutationThreshold ?? 100, 0);
    this.scheduleDelay = Math.max(opts.scheduleDelayMs ?? 0, 0);
    this.startupDelay = Math.max(opts.startupDelayMs ?? 100, 0);
    this.log = opts.log ?? (() => {});
  }

  start(): void {
    if (this.startupDelay > 0) this.schedule(this.startupDelay);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
    for (const w of this.waiters.splice(0)) w.reject(new Error('gc scheduler stopped'));
  }

  /** A write happened; `dirty` when it deleted something. `released`: what the deletion let go. */
  mutation(dirty: boolean, released: ReleasedResource[] = []): void {
    this.released.push(...released);
    this.event({ ts: Date.now(), mutation: true, dirty });
  }

  /** Collect as soon as scheduled and resolve with that collection's stats (a synchronous delete). */
  scheduleAndWait(released: ReleasedResource[] = []): Promise<GcStats> {
    this.released.push(...released);
    const p = new Promise<GcStats>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.event({ ts: Date.now(), mutation: false, dirty: false });
    return p;
  }

  private event(e: { ts: number; mutation: boolean; dirty: boolean }): void {
    if (this.stopped) return;
    if (this.lastCollection !== undefined && this.lastCollection > e.ts) return;
    if (e.dirty) this.deletions++;
    if (e.mutation) this.mutations++;
    else this.triggered = true;
    if (
      this.triggered ||
      (this.deletionThreshold > 0 && this.deletions >= this.deletionThreshold) ||
      (this.nextCollection === undefined &&
        ((this.deletionThreshold === 0 && this.deletions > 0) || (this.mutationThreshold > 0 && this.mutations >= this.mutationThreshold)))
    ) {
      if (this.nextCollection === undefined || this.nextCollection > Date.now() + this.scheduleDelay) this.schedule(this.scheduleDelay);
    }
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    this.nextCollection = Date.now() + ms;
    this.timer = setTimeout(() => void this.tick(), ms);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    if (this.running) {
      // A collection is still running (a slow sweep): look again after it.
      await this.running;
      return this.tick();
    }
    const deferredDue = this.deferredUntil !== undefined && Date.now() >= this.deferredUntil;
    if (!this.triggered && this.lastCollection !== undefined && this.deletions === 0 && !deferredDue &&
        (this.mutationThreshold === 0 || this.mutations < this.mutationThreshold)) {
      this.schedule(this.interval);
      return;
    }
    this.running = this.run().finally(() => (this.running = undefined));
    await this.running;
  }

  private async run(): Promise<void> {
    const waiters = this.waiters.splice(0);
    const released = this.released.splice(0);
    this.triggered = false;
    this.deletions = 0;
    this.mutations = 0;
    let stats: GcStats;
    try {
      stats = await this.collect(released);
    } catch (err) {
      this.log('garbage collection failed', err);
      const last = Date.now();
      const retry = (this.nextCollection ?? last) - (this.lastCollection ?? last) + 1000;
      this.lastCollection = last;
      this.schedule(Math.max(retry, 1000));
      for (const w of waiters) w.reject(err);
      return;
    }
    this.gcTime += stats.elapsedMs;
    this.collections++;
    if (this.pauseThreshold > 0) {
      const avg = this.gcTime / this.collections;
      this.interval = Math.max(avg / this.pauseThreshold - avg, 100);
    }
    this.deferredUntil = stats.deferredUntil;
    this.lastCollection = Date.now();
    this.schedule(this.interval);
    for (const w of waiters) w.resolve(stats);
  }
}
