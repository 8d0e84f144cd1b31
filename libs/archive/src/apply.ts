// Applying an OCI layer tar onto a directory, safely (containerd's archive.Apply):
// parents are resolved inside the root (symlinks cannot lead out), the entry itself is
// never followed, hardlink targets are resolved inside the root, whiteouts become overlay
// whiteouts or deletions, and decompression is bounded.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { errInvalidArgument, errNotImplemented } from '@flotilla/errdefs';
import { rootPath } from './resolve.js';

const execFileP = promisify(execFile);

export interface ApplyOptions {
  /** overlay: whiteouts become 0/0 char devices and opaque xattrs; native: deletions. */
  whiteouts: 'overlay' | 'native';
  /** Refuse layers that decompress past this many bytes. */
  maxUncompressedBytes?: number;
}

export interface ApplyResult {
  /** Bytes of the uncompressed tar. */
  size: number;
  /** sha256 of the uncompressed tar (the layer's diff ID). */
  diffID: string;
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE = '.wh..wh..opq';
const DEFAULT_MAX = 64 * 1024 ** 3;

/** Decompresses by magic number, as containerd's compression.DecompressStream does. */
async function decompress(src: Readable): Promise<Readable> {
  const peek = new PassThrough();
  const first: Buffer = await new Promise((resolve, reject) => {
    const onReadable = () => {
      const chunk = src.read();
      if (chunk === null) return;
      src.off('readable', onReadable);
      src.off('end', onEnd);
      resolve(chunk);
    };
    const onEnd = () => resolve(Buffer.alloc(0));
    src.on('readable', onReadable);
    src.once('end', onEnd);
    src.once('error', reject);
  });
  peek.write(first);
  src.pipe(peek);
  if (first[0] === 0x1f && first[1] === 0x8b) return peek.pipe(zlib.createGunzip());
  if (first[0] === 0x28 && first[1] === 0xb5 && first[2] === 0x2f && first[3] === 0xfd) {
    throw errNotImplemented('zstd layers are not supported');
  }
  return peek;
}

async function setXattr(p: string, key: string, value: string): Promise<void> {
  await execFileP('setfattr', ['-h', '-n', key, '-v', value, p]);
}

async function mknod(p: string, kind: 'c' | 'b' | 'p', major = 0, minor = 0): Promise<void> {
  await execFileP('mknod', kind === 'p' ? [p, 'p'] : [p, kind, String(major), String(minor)]);
}

async function lexists(p: string) {
  return fs.lstat(p).catch(() => undefined);
}

/** Cleans a tar entry name to a relative path; refuses nothing here (resolution contains it). */
function cleanName(name: string): string {
  return path.posix.normalize('/' + name).slice(1);
}

export async function applyLayer(root: string, src: Readable, opts: ApplyOptions): Promise<ApplyResult> {
  const max = opts.maxUncompressedBytes ?? DEFAULT_MAX;
  const hash = createHash('sha256');
  let size = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      size += chunk.length;
      if (size > max) {
        cb(errInvalidArgument(`layer decompresses past ${max} bytes`));
        return;
      }
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  const extract = tar.extract();
  const dirTimes: { p: string; mtime: Date }[] = [];
  const unpacked = new Set<string>();
  const opaque: string[] = [];

  const work = (async () => {
    for await (const entry of extract) {
      const h = entry.header;
      const name = cleanName(h.name);
      if (!name) {
        entry.resume();
        continue;
      }
      const parentRel = path.posix.dirname(name);
      const base = path.posix.basename(name);
      const parent = await rootPath(root, parentRel === '.' ? '' : parentRel);
      const target = path.join(parent, base);
      await fs.mkdir(parent, { recursive: true, mode: 0o755 });

      if (base.startsWith(WHITEOUT_PREFIX)) {
        entry.resume();
        if (base === OPAQUE) {
          if (opts.whiteouts === 'overlay') await setXattr(parent, 'trusted.overlay.opaque', 'y');
          else opaque.push(parent);
        } else {
          const victim = path.join(parent, base.slice(WHITEOUT_PREFIX.length));
          if (opts.whiteouts === 'overlay') {
            await fs.rm(victim, { recursive: true, force: true });
            await mknod(victim, 'c', 0, 0);
          } else {
            await fs.rm(victim, { recursive: true, force: true });
          }
        }
        continue;
      }

      const existing = await lexists(target);
      if (existing && !(existing.isDirectory() && h.type === 'directory')) await fs.rm(target, { recursive: true, force: true });
      unpacked.add(target);
      const mode = (h.mode ?? 0o644) & 0o7777;
      switch (h.type) {
        case 'directory':
          if (!existing || !existing.isDirectory()) await fs.mkdir(target, { mode });
          entry.resume();
          break;
        case 'file':
        case 'contiguous-file': {
          const fh = await fs.open(target, 'wx', 0o600);
          try {
            for await (const chunk of entry) await fh.write(chunk as Buffer);
          } finally {
            await fh.close();
          }
          break;
        }
        case 'symlink':
          entry.resume();
          await fs.symlink(h.linkname ?? '', target);
          break;
        case 'link': {
          entry.resume();
          const src = await rootPath(root, cleanName(h.linkname ?? ''));
          const st = await lexists(src);
          if (!st) throw errInvalidArgument(`hardlink ${JSON.stringify(h.name)} to missing ${JSON.stringify(h.linkname)}`);
          await fs.link(src, target);
          break;
        }
        case 'character-device':
        case 'block-device':
          entry.resume();
          await mknod(target, h.type === 'character-device' ? 'c' : 'b', h.devmajor ?? 0, h.devminor ?? 0);
          break;
        case 'fifo':
          entry.resume();
          await mknod(target, 'p');
          break;
        default:
          entry.resume();
          continue; // pax/gnu metadata entries and unknown types are skipped, as containerd does
      }
      if (h.type !== 'link') {
        await fs.lchown(target, h.uid ?? 0, h.gid ?? 0);
        if (h.type !== 'symlink') await fs.chmod(target, mode);
        for (const [k, v] of Object.entries(h.pax ?? {})) {
          if (k.startsWith('SCHILY.xattr.')) await setXattr(target, k.slice('SCHILY.xattr.'.length), v);
        }
        const mtime = h.mtime ?? new Date(0);
        if (h.type === 'directory') dirTimes.push({ p: target, mtime });
        else await fs.lutimes(target, mtime, mtime);
      }
    }
  })();

  const input = await decompress(src);
  // A refused entry stops the whole pipeline; nothing keeps reading a hostile layer.
  work.catch((err) => extract.destroy(err));
  await Promise.all([pipeline(input, counter, extract), work]);

  // native opaque directories: drop whatever this layer did not itself put there.
  for (const dir of opaque) {
    for (const e of await fs.readdir(dir)) {
      const p = path.join(dir, e);
      if (!unpacked.has(p)) await fs.rm(p, { recursive: true, force: true });
    }
  }
  // Directory times last: creating children changes them.
  for (const { p, mtime } of dirTimes.reverse()) await fs.utimes(p, mtime, mtime);
  return { size, diffID: 'sha256:' + hash.digest('hex') };
}
