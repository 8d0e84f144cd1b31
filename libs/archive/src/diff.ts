// Writing the layer tar that turns a lower tree into an upper one (containerd's walking
// differ: archive.WriteDiff over continuity's double-walk fs.Changes):
// - both trees are walked in name order; an entry of the upper absent from the lower, or
//   differing in kind, mode, owner, device, size, mtime or link target (content compared
//   only when both mtimes look truncated to the second), is written from the upper; an
//   entry of the lower absent from the upper becomes a `.wh.<name>` whiteout;
// - directories above a change are written first, from the upper, if not yet written;
// - hardlinks within the written set become link entries; sockets are skipped;
// - only the security.capability xattr is carried (PAX SCHILY.xattr), mtimes are whole
//   seconds, modes keep setuid/setgid/sticky.
// The lower may be one directory (read as is) or overlayfs lower layers, nearest first
// (whiteout devices and opaque directories honoured, as the kernel would merge them).
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, type Stats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { errInvalidArgument } from '@flotilla/errdefs';
import { lgetxattrs } from './fsops.js';

const execFileP = promisify(execFile);

export interface DiffOptions {
  /** Compression of what is written to `out`. Default none. */
  compression?: 'none' | 'gzip';
  /** Mtime of whiteout entries. Default now. */
  whiteoutTime?: Date;
}

export interface DiffResult {
  /** The uncompressed tar: its digest (the layer's diff ID) and size. */
  diffID: string;
  size: number;
  /** What was written to `out`: equal to diffID/size when uncompressed. */
  digest: string;
  compressedSize: number;
}

/** One entry of a (possibly merged) tree: where it really is, and its lstat. */
interface Node {
  abs: string;
  st: Stats;
  /** For directories of a layered view: this directory in every layer merged into it. */
  layers?: string[];
}

/** A tree to walk: a plain directory, or overlay lower layers merged. */
interface View {
  root(): Promise<Node | undefined>;
  children(dir: Node): Promise<Map<string, Node>>;
}

async function lstatOrUndefined(p: string): Promise<Stats | undefined> {
  try {
    return await fs.lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function plainView(root: string): View {
  return {
    async root() {
      const st = await lstatOrUndefined(root);
      return st ? { abs: root, st } : undefined;
    },
    async children(dir) {
      const out = new Map<string, Node>();
      for (const name of await fs.readdir(dir.abs)) {
        const abs = path.join(dir.abs, name);
        const st = await lstatOrUndefined(abs);
        if (st) out.set(name, { abs, st });
      }
      return out;
    },
  };
}

const isWhiteout = (st: Stats) => st.isCharacterDevice() && st.rdev === 0;

/** Directories marked opaque in `layer` (one getfattr for the whole layer). */
async function opaqueDirs(layer: string): Promise<Set<string>> {
  let stdout = '';
  try {
    ({ stdout } = await execFileP('getfattr', ['-R', '-h', '-P', '--absolute-names', '-n', 'trusted.overlay.opaque', '--', layer], { maxBuffer: 64 << 20 }));
  } catch (err) {
    // Non-zero when some files lack the attribute; what it printed is still the answer.
    stdout = (err as { stdout?: string }).stdout ?? '';
  }
  const out = new Set<string>();
  let file = '';
  for (const line of stdout.split('\n')) {
    if (line.startsWith('# file: ')) file = line.slice(8);
    else if (line.startsWith('trusted.overlay.opaque="y"') && file) out.add(path.resolve(file));
  }
  return out;
}

function layeredView(layers: string[]): View {
  let opaque: Promise<Set<string>> | undefined;
  const isOpaque = async (dir: string) => {
    opaque ??= Promise.all(layers.map(opaqueDirs)).then((sets) => new Set(sets.flatMap((s) => [...s])));
    return (await opaque).has(dir);
  };
  /** The layers a directory found at `dirs[0]` merges with: lower ones while they hold a directory there. */
  const mergeDown = async (first: string, lowerCandidates: string[]): Promise<string[]> => {
    const out = [first];
    if (await isOpaque(first)) return out;
    for (const c of lowerCandidates) {
      const st = await lstatOrUndefined(c);
      if (!st) continue;
      if (!st.isDirectory()) break; // a non-directory (or whiteout) below ends the merge
      out.push(c);
      if (await isOpaque(c)) break;
    }
    return out;
  };
  return {
    async root() {
      if (layers.length === 0) return undefined;
      const st = await fs.lstat(layers[0]!);
      return { abs: layers[0]!, st, layers: await mergeDown(layers[0]!, layers.slice(1)) };
    },
    async children(dir) {
      const found = new Map<string, { idx: number; st: Stats; abs: string }>();
      const dirLayers = dir.layers ?? [dir.abs];
      for (let i = 0; i < dirLayers.length; i++) {
        for (const name of await fs.readdir(dirLayers[i]!)) {
          if (found.has(name)) continue; // a nearer layer decides
          const abs = path.join(dirLayers[i]!, name);
          const st = await lstatOrUndefined(abs);
          if (st) found.set(name, { idx: i, st, abs });
        }
      }
      const out = new Map<string, Node>();
      for (const [name, f] of found) {
        if (isWhiteout(f.st)) continue;
        const node: Node = { abs: f.abs, st: f.st };
        if (f.st.isDirectory()) node.layers = await mergeDown(f.abs, dirLayers.slice(f.idx + 1).map((d) => path.join(d, name)));
        out.set(name, node);
      }
      return out;
    },
  };
}

async function sameContent(a: string, b: string): Promise<boolean> {
  const [fa, fb] = [await fs.open(a), await fs.open(b)];
  try {
    const [ba, bb] = [Buffer.alloc(64 * 1024), Buffer.alloc(64 * 1024)];
    for (;;) {
      const [ra, rb] = [await fa.read(ba, 0, ba.length), await fb.read(bb, 0, bb.length)];
      if (ra.bytesRead !== rb.bytesRead) return false;
      if (ra.bytesRead === 0) return true;
      if (!ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
    }
  } finally {
    await fa.close();
    await fb.close();
  }
}

async function capability(p: string): Promise<string | undefined> {
  const x = await lgetxattrs(p).catch(() => new Map<string, Buffer>());
  return x.get('security.capability')?.toString('latin1');
}

/** continuity's sameFile: metadata first, content only when times cannot tell. */
async function same(l: Node, u: Node): Promise<boolean> {
  const a = l.st;
  const b = u.st;
  if ((a.mode & 0o170000) !== (b.mode & 0o170000)) return false;
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || a.rdev !== b.rdev) return false;
  if ((await capability(l.abs)) !== (await capability(u.abs))) return false;
  if (a.isDirectory()) return true;
  if (a.size !== b.size) return false;
  const [sa, sb] = [Math.floor(a.mtimeMs / 1000), Math.floor(b.mtimeMs / 1000)];
  if (sa !== sb) return false;
  const [na, nb] = [a.mtimeMs % 1000, b.mtimeMs % 1000];
  if (na === 0 && nb === 0) {
    if (a.isSymbolicLink()) return (await fs.readlink(l.abs)) === (await fs.readlink(u.abs));
    if (a.size === 0) return true;
    if (a.isFile()) return sameContent(l.abs, u.abs);
    return true;
  }
  if (na !== nb) return false;
  if (a.isSymbolicLink()) return (await fs.readlink(l.abs)) === (await fs.readlink(u.abs));
  return true;
}

/**
 * Writes to `out` the layer tar that, applied onto `lower`, gives `upper`; `out` is ended.
 * `lower` is a directory, overlay lower layers nearest first, or "" / [] for none.
 */
export async function computeDiff(lower: string[] | string, upper: string, out: Writable, opts: DiffOptions = {}): Promise<DiffResult> {
  const upperView = plainView(upper);
  const upperRoot = await upperView.root();
  if (!upperRoot?.st.isDirectory()) throw errInvalidArgument(`diff upper ${upper} is not a directory`);
  const lowerView = typeof lower === 'string' ? (lower ? plainView(lower) : layeredView([])) : layeredView(lower);
  const lowerRoot = await lowerView.root();
  const whiteoutTime = opts.whiteoutTime ?? new Date();

  const pack = tar.pack();
  const rawHash = createHash('sha256');
  let size = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _e, cb) {
      size += chunk.length;
      rawHash.update(chunk);
      cb(null, chunk);
    },
  });
  const outHash = createHash('sha256');
  let outSize = 0;
  const outCounter = new Transform({
    transform(chunk: Buffer, _e, cb) {
      outSize += chunk.length;
      outHash.update(chunk);
      cb(null, chunk);
    },
  });
  const stages: NodeJS.ReadWriteStream[] = [counter];
  if (opts.compression === 'gzip') stages.push(zlib.createGzip());
  const streams: (NodeJS.ReadableStream | NodeJS.WritableStream | NodeJS.ReadWriteStream)[] = [Readable.from(pack as unknown as AsyncIterable<Buffer>), ...stages, outCounter, out];
  const writing = pipeline(streams);
  writing.catch(() => {});

  const written = new Set<string>(); // tar names of directories already written
  const inodes = new Map<string, string>(); // dev:ino -> first tar name

  const entry = (header: tar.Header | Record<string, unknown>, body?: Buffer) =>
    new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      // Regular files always get a body (tar-stream waits for one otherwise, even when empty).
      if (body || header.type === 'file') pack.entry(header as tar.Header, body ?? Buffer.alloc(0), cb);
      else pack.entry(header as tar.Header, cb);
    });

  const headerFor = async (rel: string, n: Node): Promise<Record<string, unknown>> => {
    const st = n.st;
    const h: Record<string, unknown> = {
      name: st.isDirectory() ? rel + '/' : rel,
      mode: st.mode, // the file type bits keep a 000 mode from reading as "unset" (tar keeps 07777)
      uid: st.uid,
      gid: st.gid,
      mtime: new Date(Math.floor(st.mtimeMs / 1000) * 1000),
      size: 0,
    };
    if (st.isDirectory()) h.type = 'directory';
    else if (st.isSymbolicLink()) Object.assign(h, { type: 'symlink', linkname: await fs.readlink(n.abs) });
    else if (st.isCharacterDevice() || st.isBlockDevice()) Object.assign(h, { type: st.isCharacterDevice() ? 'character-device' : 'block-device', devmajor: Math.floor(st.rdev / 256) & 0xfff, devminor: (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00) });
    else if (st.isFIFO()) h.type = 'fifo';
    else Object.assign(h, { type: 'file', size: st.size });
    const cap = await capability(n.abs);
    if (cap !== undefined) h.pax = { 'SCHILY.xattr.security.capability': cap };
    return h;
  };

  /** Writes the not-yet-written directories above `rel`, from the upper. */
  const parents = async (rel: string) => {
    const parts = rel.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (written.has(d)) continue;
      const abs = path.join(upper, d);
      await entry(await headerFor(d, { abs, st: await fs.lstat(abs) }));
      written.add(d);
    }
  };

  const add = async (rel: string, n: Node) => {
    if (n.st.isSocket()) return;
    await parents(rel);
    const h = await headerFor(rel, n);
    if (!n.st.isDirectory() && n.st.nlink > 1) {
      const key = `${n.st.dev}:${n.st.ino}`;
      const first = inodes.get(key);
      if (first !== undefined) {
        delete h.pax;
        Object.assign(h, { type: 'link', linkname: first, size: 0 });
      } else inodes.set(key, rel);
    }
    if (h.type === 'file' && (h.size as number) > 0) {
      let done!: Promise<void>;
      type Sink = { write(b: Buffer): boolean; once(e: 'drain', f: () => void): void; end(): void };
      const sink = await new Promise<Sink>((resolveSink) => {
        done = new Promise<void>((resolve, reject) => {
          resolveSink(pack.entry(h as unknown as tar.Header, (err) => (err ? reject(err) : resolve())) as unknown as Sink);
        });
      });
      for await (const chunk of createReadStream(n.abs)) {
        if (!sink.write(chunk as Buffer)) await new Promise<void>((r) => sink.once('drain', () => r()));
      }
      sink.end();
      await done;
    } else {
      await entry(h);
    }
    if (n.st.isDirectory()) written.add(rel);
  };

  const addTree = async (rel: string, n: Node) => {
    await add(rel, n);
    if (n.st.isDirectory()) {
      const kids = await upperView.children(n);
      for (const name of [...kids.keys()].sort()) await addTree(`${rel}/${name}`, kids.get(name)!);
    }
  };

  const whiteout = async (rel: string) => {
    await parents(rel);
    const dir = path.posix.dirname(rel);
    const name = `${dir === '.' ? '' : dir + '/'}.wh.${path.posix.basename(rel)}`;
    // S_IFREG alone: tar-stream replaces a falsy mode with 0644, containerd writes 0.
    await entry({ name, type: 'file', mode: 0o100000, size: 0, mtime: whiteoutTime });
  };

  /** Compares directory `rel` (present in both) child by child. */
  const walk = async (rel: string, l: Node | undefined, u: Node) => {
    const lk = l?.st.isDirectory() ? await lowerView.children(l) : new Map<string, Node>();
    const uk = await upperView.children(u);
    const names = [...new Set([...lk.keys(), ...uk.keys()])].sort();
    for (const name of names) {
      const childRel = rel ? `${rel}/${name}` : name;
      const a = lk.get(name);
      const b = uk.get(name);
      if (!b) {
        await whiteout(childRel);
      } else if (!a) {
        await addTree(childRel, b);
      } else if (a.st.isDirectory() && b.st.isDirectory()) {
        if (!(await same(a, b))) await add(childRel, b);
        await walk(childRel, a, b);
      } else if (!(await same(a, b))) {
        // Kind changes replace: applying a non-directory removes what was there.
        if (a.st.isDirectory() !== b.st.isDirectory()) await addTree(childRel, b);
        else await add(childRel, b);
      }
    }
  };

  try {
    await walk('', lowerRoot, upperRoot);
    pack.finalize();
    await writing;
  } catch (err) {
    pack.destroy(err as Error);
    throw err;
  }
  const diffID = 'sha256:' + rawHash.digest('hex');
  return { diffID, size, digest: opts.compression === 'gzip' ? 'sha256:' + outHash.digest('hex') : diffID, compressedSize: outSize };
}
