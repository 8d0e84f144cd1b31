// Finding the shim daemon of one task, for tests that stop or kill it.
import fs from 'node:fs/promises';
import { shimPids } from '@flotilla/launcher';

/**
 * The pid of the shim daemon serving task `ns/id` of the stack whose gateway socket is
 * `socket` (its argv names the address, namespace and id; the short-lived `start` is not it).
 */
export async function shimOf(socket: string, ns: string, id: string): Promise<number> {
  for (const pid of await shimPids(socket)) {
    const argv = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    const at = (f: string) => argv[argv.indexOf(f) + 1];
    if (at('-namespace') === ns && at('-id') === id && !argv.includes('start')) return pid;
  }
  throw new Error(`no shim for ${ns}/${id}`);
}
