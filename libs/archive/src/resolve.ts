// Path resolution scoped to a root (continuity's fs.RootPath, which containerd's archive
// uses for every parent directory and hardlink target): every symlink met on the way is
// followed as if `root` were "/", and ".." never climbs above it, so the result is always
// `root` or a path below it, whatever the tree contains.
import fs from 'node:fs/promises';
import path from 'node:path';
import { errInvalidArgument } from '@flotilla/errdefs';

const MAX_LINKS = 255;

/** Resolves `rel` (all components, symlinks followed) to a path inside `root`. */
export async function rootPath(root: string, rel: string): Promise<string> {
  const parts = rel.split('/').filter((p) => p && p !== '.');
  const stack: string[] = [];
  let links = 0;
  while (parts.length > 0) {
    const part = parts.shift()!;
    if (part === '..') {
      stack.pop(); // at the root this is a no-op: "/.." is "/"
      continue;
    }
    const candidate = path.join(root, ...stack, part);
    let st;
    try {
      st = await fs.lstat(candidate);
    } catch {
      stack.push(part); // missing (yet): nothing to follow
      continue;
    }
    if (!st.isSymbolicLink()) {
      stack.push(part);
      continue;
    }
    if (++links > MAX_LINKS) throw errInvalidArgument(`too many links resolving ${JSON.stringify(rel)} in ${root}`);
    const target = await fs.readlink(candidate);
    if (target.startsWith('/')) stack.length = 0;
    parts.unshift(...target.split('/').filter((p) => p && p !== '.'));
  }
  return path.join(root, ...stack);
}

/** Whether `p` is `root` or below it, lexically. */
export function within(root: string, p: string): boolean {
  const rel = path.relative(root, p);
  return rel === '' || (rel !== '..' && !rel.startsWith('../') && !path.isAbsolute(rel));
}
