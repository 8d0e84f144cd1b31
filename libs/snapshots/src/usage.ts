// Disk usage of a tree as containerd's continuity fs.DiskUsage counts it: allocated
// blocks (512-byte units) and inodes, each hardlinked inode once.
import fs from 'node:fs/promises';
import path from 'node:path';

export interface Usage {
  /** Bytes allocated. */
  size: number;
  /** Distinct inodes. */
  inodes: number;
}

export async function diskUsage(root: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  const walk = async (p: string): Promise<void> => {
    const st = await fs.lstat(p, { bigint: true });
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) for (const e of await fs.readdir(p)) await walk(path.join(p, e));
  };
  await walk(root);
  return { size, inodes: seen.size };
}
