// The few file operations Node lacks (mknod, lsetxattr/lgetxattr), done through the
// standard tools: mknod(1) from coreutils, setfattr/getfattr from attr. Layers carry few
// devices and xattrs, so a process per call is acceptable.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** mknod(2): a character or block device, or a fifo; the mode is set separately. */
export async function mknod(p: string, kind: 'c' | 'b' | 'p', major = 0, minor = 0): Promise<void> {
  await execFileP('mknod', kind === 'p' ? ['--', p, 'p'] : ['--', p, kind, String(major), String(minor)]);
}

/** lsetxattr(2): never follows a symlink. Values are set byte for byte (hex-encoded). */
export async function lsetxattr(p: string, key: string, value: Buffer | string): Promise<void> {
  const hex = '0x' + Buffer.from(value).toString('hex');
  await execFileP('setfattr', ['-h', '-n', key, '-v', Buffer.from(value).length === 0 ? '""' : hex, '--', p]);
}

/** All xattrs of `p` (not following a symlink) in namespaces this process can read. */
export async function lgetxattrs(p: string): Promise<Map<string, Buffer>> {
  const { stdout } = await execFileP('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', '--', p]);
  const out = new Map<string, Buffer>();
  for (const line of stdout.split('\n')) {
    const m = /^([^#=][^=]*)=(?:0x([0-9a-f]*))?$/.exec(line.trim());
    if (m) out.set(m[1]!, Buffer.from(m[2] ?? '', 'hex'));
  }
  return out;
}
