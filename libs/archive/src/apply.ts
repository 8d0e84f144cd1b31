// Applying an OCI layer tar onto a directory, safely (containerd's archive.Apply with the
// diff service's accounting):
// - every entry's parent is resolved inside the root (symlinks followed as if the root were
//   "/", ".." clamped), the entry itself is never followed, and an existing entry in its
//   place is removed first unless both are directories;
// - hardlink targets resolve inside the root; the link itself is not followed (a hardlink
//   to a symlink links the symlink), and modes are never set through a symlink;
// - whiteouts become overlay whiteouts (0/0 char devices, trusted.overlay.opaque=y) or
//   deletions, and a whiteout may only name an entry of its own directory;
// - `trusted.*` xattrs from the archive are ignored (as containerd refuses them);
// - the uncompressed stream is counted and hashed (size and diffID of the layer), and
//   refused past `maxUncompressedBytes`.
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { ContainerdError, errInvalidArgument, errUnknown } from '@flotilla/errdefs';
import { decompressLayer } from './compression.js';
import { lgetxattrs, lsetxattr, mknod } from './fsops.js';
import { rootPath, within } from './resolve.js';

export interface ApplyOptions {
  /** The layer blob's media type (OCI or Docker layer types, uncompressed or gzip). */
  mediaType: string;
  /**
   * overlay: `.wh.<name>` becomes a 0/0 character device and `.wh..wh..opq` the xattr
   * trusted.overlay.opaque=y on its directory (for an overlayfs upperdir);
   * native: `.wh.<name>` deletes <name> and `.wh..wh..opq` empties its directory of what
   * this layer has not itself put there (for a plain directory or a mounted view).
   */
  whiteouts: 'overlay' | 'native';
  /** Refuse layers that decompress past this many bytes. Default 64 GiB. */
  maxUncompressedBytes?: number;
  /**
   * Lower directories (nearest first) whose directory owners and modes are copied onto
   * parents this layer creates implicitly (containerd's WithParents; an overlay upperdir
   * applied without its lowers would otherwise mask their attributes).
   */
  parents?: string[];
}

export interface ApplyResult {
  /** Bytes of the uncompressed tar, trailing padding included. */
  size: number;
  /** sha256 of the uncompressed tar (the layer's diff ID), "sha256:<hex>". */
  diffID: string;
}

export const DEFAULT_MAX_UNCOMPRESSED_BYTES = 64 * 1024 ** 3;

const WHITEOUT_PREFIX = '.wh.';
const WHITEOUT_OPAQUE = '.wh..wh..opq';
const XATTR_PAX_PREFIX = 'SCHILY.xattr.';
// Go's time bounds as containerd's boundTime uses them: anything before the epoch is the epoch.
const MIN_TIME = new Date(0);

// tar-stream's header, with the PAX records it keeps and the types its typings leave out.
type Header = Omit<tar.Header, 'pax' | 'type'> & { pax?: Record<string, string> | null; type: tar.Header['type'] | 'pax-global-header' | null };
/** A tar-stream entry (a streamx Readable): iterable, and drained by resume(). */
type Entry = AsyncIterable<Buffer> & { resume(): unknown };

/** A tar name as containerd's filepath.Clean leaves it, relative to the root ("" = the root). */
function cleanName(name: string): string {
  return path.posix.normalize('/' + name).slice(1).replace(/\/$/, '');
}

function boundTime(d: Date | undefined): Date {
  if (!d || Number.isNaN(d.getTime()) || d.getTime() < 0) return MIN_TIME;
  return d;
}

async function lstatOrUndefined(p: string) {
  try {
    return await fs.lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Header fields with PAX overrides applied (tar-stream applies only path, linkpath, size). */
function effective(h: Header): { uid: number; gid: number; mtime: Date; atime?: Date } {
  const pax = h.pax ?? {};
  const num = (v: string | undefined, d: number) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : d);
  const time = (v: string | undefined) => (v !== undefined && /^-?\d+(\.\d+)?$/.test(v) ? new Date(Number(v) * 1000) : undefined);
  return {
    uid: num(pax.uid, h.uid ?? 0),
    gid: num(pax.gid, h.gid ?? 0),
    mtime: time(pax.mtime) ?? h.mtime ?? MIN_TIME,
    atime: time(pax.atime),
  };
}

/**
 * Creates the missing directories of `dir` (absolute, inside `root`) with mode 0755, each
 * taking owner and mode from the first of `parents` holding that directory.
 */
async function mkparent(root: string, dir: string, parents: string[]): Promise<void> {
  const st = await lstatOrUndefined(dir);
  if (st) {
    if (st.isDirectory()) return;
    throw errInvalidArgument(`parent ${JSON.stringify(path.relative(root, dir))} is not a directory`);
  }
  const up = path.dirname(dir);
  if (up !== root && within(root, up)) await mkparent(root, up, parents);
  try {
    await fs.mkdir(dir, { mode: 0o755 });
    await fs.chmod(dir, 0o755);
  } catch (err) {
    if ((await lstatOrUndefined(dir))?.isDirectory()) return;
    throw err;
  }
  for (const lower of parents) {
    const lp = await rootPath(lower, path.relative(root, dir));
    const lst = await lstatOrUndefined(lp);
    if (!lst) continue;
    if (!lst.isDirectory()) break; // replaced below: its attributes do not apply
    await fs.lchown(dir, lst.uid, lst.gid);
    await fs.chmod(dir, lst.mode & 0o7777);
    // Best effort, as containerd's copy-up: some namespaces (security.*) may refuse.
    for (const [k, v] of await lgetxattrs(lp)) if (!k.startsWith('trusted.')) await lsetxattr(dir, k, v).catch(() => {});
    break;
  }
}

/** chmod that never follows a symlink: symlinks keep their mode (containerd's lchmod). */
async function lchmod(p: string, mode: number): Promise<void> {
  const st = await fs.lstat(p);
  if (!st.isSymbolicLink()) await fs.chmod(p, mode);
}

/** Wraps a filesystem failure of one entry; classified errors pass through unchanged. */
function entryError(name: string, err: unknown): unknown {
  if (err instanceof ContainerdError) return err;
  return errUnknown(`failed to apply layer entry ${JSON.stringify(name)}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

/** Applies a layer blob onto `root` (which must exist). See ApplyOptions for the whiteout modes. */
export async function applyLayer(root: string, src: Readable, opts: ApplyOptions): Promise<ApplyResult> {
  const max = opts.maxUncompressedBytes ?? DEFAULT_MAX_UNCOMPRESSED_BYTES;
  if (!(max > 0)) throw errInvalidArgument(`maxUncompressedBytes must be positive, got ${max}`);
  if (opts.whiteouts !== 'overlay' && opts.whiteouts !== 'native') throw errInvalidArgument(`unknown whiteout mode ${JSON.stringify(opts.whiteouts)}`);
  const rootSt = await lstatOrUndefined(root);
  if (!rootSt?.isDirectory()) throw errInvalidArgument(`apply root ${root} is not a directory`);
  root = path.resolve(root);
  const parents = opts.parents ?? [];

  const input = await decompressLayer(src, opts.mediaType);
  const hash = createHash('sha256');
  let size = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      size += chunk.length;
      if (size > max) {
        cb(errInvalidArgument(`layer decompresses past the limit of ${max} bytes`));
        return;
      }
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  const extract = tar.extract();
  // Runs alongside the entry loop; its failure (corrupt gzip, size limit) destroys the
  // extractor, which surfaces in the loop. Attached now so it never goes unhandled.
  const feeding = pipeline(input, counter, extract);
  feeding.catch(() => {});

  const dirs: { name: string; mtime: Date; atime: Date }[] = [];
  const unpacked = new Set<string>();

  try {
    for await (const entry of extract) {
      const h = entry.header as unknown as Header;
      try {
        await applyEntry(h, entry as unknown as Entry);
      } catch (err) {
        throw entryError(h.name, err);
      }
    }
    await feeding;
    // Directory times last: creating their children changed them. Resolved again, as the
    // layer may have replaced a directory by a symlink since.
    for (const d of dirs) {
      const p = await rootPath(root, d.name);
      await fs.lutimes(p, d.atime, d.mtime).catch((err) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
  } catch (err) {
    // Nothing keeps reading a refused layer (a partly applied tree is the caller's to discard).
    input.destroy();
    src.destroy();
    extract.destroy();
    throw err;
  }
  return { size, diffID: 'sha256:' + hash.digest('hex') };

  /** Removes everything below `dir` that this layer has not itself unpacked. */
  async function clearExcept(dir: string): Promise<void> {
    for (const child of await fs.readdir(dir)) {
      const p = path.join(dir, child);
      if (!unpacked.has(p)) await fs.rm(p, { recursive: true, force: true });
      else if ((await fs.lstat(p)).isDirectory()) await clearExcept(p);
    }
  }

  async function applyEntry(h: Header, entry: Entry): Promise<void> {
    // Only regular files' data is read; every other entry is drained now.
    if (h.type !== 'file' && h.type !== 'contiguous-file') entry.resume();
    if (h.type === 'pax-global-header') return;
    const name = cleanName(h.name);
    if (name === '') return; // the root itself: containerd ignores it
    const base = path.posix.basename(name);
    const dir = await rootPath(root, path.posix.dirname(name));
    const target = path.join(dir, base);
    if (target === root || !within(root, target)) return;
    if (dir !== root) await mkparent(root, dir, parents);

    if (base.startsWith(WHITEOUT_PREFIX)) {
      entry.resume();
      if (base === WHITEOUT_OPAQUE) {
        if (opts.whiteouts === 'overlay') {
          await lsetxattr(dir, 'trusted.overlay.opaque', 'y');
        } else {
          await clearExcept(dir);
        }
        return;
      }
      const original = base.slice(WHITEOUT_PREFIX.length);
      if (original === '' || original === '.' || original === '..') {
        throw errInvalidArgument(`invalid whiteout name ${JSON.stringify(h.name)}: invalid archive`);
      }
      const victim = path.join(dir, original);
      await fs.rm(victim, { recursive: true, force: true });
      if (opts.whiteouts === 'overlay') {
        const { uid, gid } = effective(h);
        await mknod(victim, 'c', 0, 0);
        await fs.lchown(victim, uid, gid);
      }
      return;
    }

    const existing = await lstatOrUndefined(target);
    if (existing && !(existing.isDirectory() && h.type === 'directory')) await fs.rm(target, { recursive: true, force: true });

    const mode = (h.mode ?? 0o644) & 0o7777;
    const { uid, gid, mtime, atime } = effective(h);
    switch (h.type) {
      case 'directory':
        if (!existing?.isDirectory()) await fs.mkdir(target, { mode });
        break;
      case 'file':
      case 'contiguous-file':
        // "wx": the place was emptied above, so anything there now is a race, not ours to follow.
        await pipeline(entry, createWriteStream(target, { flags: 'wx', mode: 0o600 }));
        break;
      case 'symlink':
        await fs.symlink(h.linkname ?? '', target);
        break;
      case 'link': {
        const linkName = cleanName(h.linkname ?? '');
        const linkTarget = path.join(await rootPath(root, path.posix.dirname(linkName)), path.posix.basename(linkName));
        if (linkName === '' || linkTarget === root || !within(root, linkTarget)) {
          throw errInvalidArgument(`hardlink ${JSON.stringify(h.name)} to ${JSON.stringify(h.linkname)} leaves the root: invalid archive`);
        }
        // link(2) does not follow a symlink target: a hardlink to a symlink is that symlink.
        await fs.link(linkTarget, target);
        break;
      }
      case 'character-device':
      case 'block-device':
        await mknod(target, h.type === 'character-device' ? 'c' : 'b', h.devmajor ?? 0, h.devminor ?? 0);
        break;
      case 'fifo':
        await mknod(target, 'p');
        break;
      default:
        throw errInvalidArgument(`unhandled tar header type ${JSON.stringify(h.type)} for ${JSON.stringify(h.name)}`);
    }

    await fs.lchown(target, uid, gid);
    for (const [k, v] of Object.entries(h.pax ?? {})) {
      if (!k.startsWith(XATTR_PAX_PREFIX)) continue;
      const key = k.slice(XATTR_PAX_PREFIX.length);
      if (key.startsWith('trusted.')) continue; // admin attributes from an archive are refused
      await lsetxattr(target, key, v);
    }
    await lchmod(target, mode);
    const at = boundTime(atime && atime > mtime ? atime : mtime);
    if (h.type === 'directory') dirs.push({ name, mtime: boundTime(mtime), atime: at });
    else await fs.lutimes(target, at, boundTime(mtime));
    unpacked.add(target);
  }
}
