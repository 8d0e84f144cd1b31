// Finding the shim daemon of one task, for tests that stop or kill it.
import fs from 'node:fs/promises';
import path from 'node:path';

/**
 * The pid of the shim daemon serving task `ns/id` of the stack whose gateway socket is
 * `socket` (its argv names the address, namespace and id; the short-lived `start` is not it).
 */
export async function shimOf(socket: string, ns: string, id: string): Promise<number> {
  for (const e of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const argv = (await fs.readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (!path.basename(argv[0] ?? '').startsWith('containerd-shim')) continue;
    const at = (f: string) => argv[argv.indexOf(f) + 1];
    if (at('-address') === socket && at('-namespace') === ns && at('-id') === id && !argv.includes('start')) return Number(e);
  }
  throw new Error(`no shim for ${ns}/${id}`);
}
