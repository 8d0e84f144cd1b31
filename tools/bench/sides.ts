// The two systems under test, behind one interface: flotilla (a whole stack in its own
// FLOTILLA_HOME) and Debian's containerd 1.6.20 (private root and socket, CRI off).
import fs from 'node:fs/promises';
import path from 'node:path';
import { shimPids } from '@flotilla/launcher';
import { startReferenceContainerd, startStack, type CtrOptions, type CtrResult } from '@flotilla/testing';
import { processTable, withDescendants, type ProcGroup } from './memory.js';

export type SideName = 'flotilla' | 'containerd';
export const SIDES: readonly SideName[] = ['flotilla', 'containerd'];

export interface Side {
  name: SideName;
  socket: string;
  ctr(args: string[], opts?: CtrOptions): Promise<CtrResult>;
  /** Every process this side runs now, grouped as the memory report lists them. */
  processes(): Promise<ProcGroup[]>;
  stop(): Promise<void>;
}

export async function startFlotilla(opts: { env?: NodeJS.ProcessEnv } = {}): Promise<Side> {
  const stack = await startStack({ nodeId: 'bench-node', env: opts.env });
  const pgPidFile = path.join(stack.home, 'state', 'postgres', 'data', 'postmaster.pid');
  const natsDir = path.join(stack.home, 'state', 'nats');
  return {
    name: 'flotilla',
    socket: stack.socket,
    ctr: stack.ctr,
    async processes() {
      const table = await processTable();
      const groups: ProcGroup[] = Object.entries(stack.supervisor.pids()).map(([app, pid]) => ({ name: app, pids: [pid!] }));
      groups.push({ name: 'nats-server', pids: table.filter((p) => path.basename(p.argv[0] ?? '') === 'nats-server' && p.argv.includes(natsDir)).map((p) => p.pid) });
      const postmaster = Number((await fs.readFile(pgPidFile, 'utf8').catch(() => '')).split('\n')[0]);
      groups.push({ name: 'postgresql', pids: postmaster ? withDescendants(table, postmaster) : [] });
      groups.push({ name: 'shims', pids: await shimPids(stack.socket) });
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
    async processes() {
      const table = await processTable();
      const daemon = table.filter((p) => path.basename(p.argv[0] ?? '') === 'containerd' && p.argv.includes(config)).map((p) => p.pid);
      // containerd's shims connect back to its ttrpc socket; -address names the gRPC one.
      return [
        { name: 'containerd', pids: daemon },
        { name: 'shims', pids: await shimPids(ref.socket) },
      ];
    },
    stop: ref.stop,
  };
}
