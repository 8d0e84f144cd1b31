// Path resolution scoped to a root: every symlink met on the way is followed as if the
// root were "/", and ".." never climbs above it (containerd's continuity fs.RootPath).
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
      stack.pop();
      continue;
    }
    const candidate = path.join(root, ...stack, part);
    let st;
    try {
      st = await fs.lstat(candidate);
    } catch {
      stack.push(part); // does not exist (yet): nothing to follow
      continue;
    }
    if (!st.isSymbolicLink()) {
      stack.push(part);
      continue;
    }
    if (++links > MAX_LINKS) throw errInvalidArgument(`too many links resolving ${JSON.stringify(rel)}`);
    const target = await fs.readlink(candidate);
    if (path.isAbsolute(target)) stack.length = 0;
    parts.unshift(...target.split('/').filter((p) => p && p !== '.'));
  }
  return path.join(root, ...stack);
}
