// The two systems under test, behind one interface: flotilla (a whole stack in its own
// FLOTILLA_HOME) and Debian's containerd 1.6.20 (private root and socket, CRI off).
import fs from 'node:fs/promises';
import path from 'node:path';
import { startReferenceContainerd, startStack, type CtrOptions, type CtrResult } from '@flotilla/testing';
import { processTable, shimsOf, withDescendants, type ProcEntry, type ProcGroup } from './memory.js';

export type SideName = 'flotilla' | 'containerd';
export const SIDES: readonly SideName[] = ['flotilla', 'containerd'];

export interface Side {
  name: SideName;
  socket: string;
  ctr(args: string[], opts?: CtrOptions): Promise<CtrResult>;
  /** Every process this side runs now, grouped as the memory report lists them (from `table`, or a fresh scan of /proc). */
  processes(table?: ProcEntry[]): Promise<ProcGroup[]>;
  stop(): Promise<void>;
  /** flotilla only: its servers, for tools that look inside (roundtrips.ts). */
  natsUrl?: string;
  databaseUrl?: string;
}

/**
 * The environment that makes flotilla's apps write CPU profiles to `dir` (created):
 * cpuprof-preload.cjs preloaded, since node refuses --cpu-prof in NODE_OPTIONS. `signal`:
 * profile from one SIGUSR2 to the next instead of the whole process.
 */
export async function cpuProfileEnv(dir: string, opts: { signal?: boolean } = {}): Promise<NodeJS.ProcessEnv> {
  await fs.mkdir(dir, { recursive: true });
  const preload = path.join(__dirname, 'cpuprof-preload.cjs');
  return {
    NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --require ${preload}`.trim(),
    FLOTILLA_CPU_PROF_DIR: path.resolve(dir),
    ...(opts.signal ? { FLOTILLA_CPU_PROF_SIGNAL: '1' } : {}),
  };
}

export async function startFlotilla(opts: { env?: NodeJS.ProcessEnv } = {}): Promise<Side> {
  // Durable PostgreSQL, as `npm start` runs it: containerd's bolt fsyncs every update.
  const stack = await startStack({ nodeId: 'bench-node', env: opts.env, durable: true });
  const pgPidFile = path.join(stack.home, 'state', 'postgres', 'data', 'postmaster.pid');
  const natsDir = path.join(stack.home, 'state', 'nats');
  return {
    name: 'flotilla',
    socket: stack.socket,
    natsUrl: stack.env.NATS_URL,
    databaseUrl: stack.env.DATABASE_URL,
    ctr: stack.ctr,
    async processes(table = processTable()) {
      const groups: ProcGroup[] = Object.entries(stack.supervisor.pids()).map(([app, pid]) => ({ name: app, pids: [pid!] }));
      groups.push({ name: 'nats-server', pids: table.filter((p) => path.basename(p.argv[0] ?? '') === 'nats-server' && p.argv.includes(natsDir)).map((p) => p.pid) });
      const postmaster = Number((await fs.readFile(pgPidFile, 'utf8').catch(() => '')).split('\n')[0]);
      groups.push({ name: 'postgresql', pids: postmaster ? withDescendants(table, postmaster) : [] });
      groups.push({ name: 'shims', pids: shimsOf(table, stack.socket) });
      return groups;
    },
    stop: stack.stop,
  };
}

export async function startContainerd(): Promise<Side> {
  const ref = await startReferenceContainerd();
  const config = path.join(path.dirname(ref.socket), 'config.toml');
  return {
    name: 'containerd',
    socket: ref.socket,
    ctr: ref.ctr,
    async processes(table = processTable()) {
      const daemon = table.filter((p) => path.basename(p.argv[0] ?? '') === 'containerd' && p.argv.includes(config)).map((p) => p.pid);
      // containerd's shims connect back to its ttrpc socket; -address names the gRPC one.
      return [
        { name: 'containerd', pids: daemon },
        { name: 'shims', pids: shimsOf(table, ref.socket) },
      ];
    },
    stop: ref.stop,
  };
}
