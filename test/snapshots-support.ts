// Helpers for the snapshots and diff acceptance tests: OCI image archives built here from
// hand-written layer tars (exact control over whiteouts, opaque directories, links, owners
// and hostile entries), a comparable description of a mounted tree, and the parsing of a
// layer tar as ctr prints it.
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import tar from 'tar-stream';

const execFileP = promisify(execFile);

export interface LayerEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  mode?: number;
  uid?: number;
  gid?: number;
  content?: string | Buffer;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  pax?: Record<string, string>;
}

const EPOCH = new Date('2020-01-02T03:04:05Z');

/** An uncompressed layer tar holding `entries` in order. */
export async function layerTar(entries: LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const out: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    pack.on('data', (d: unknown) => void out.push(d as Buffer));
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const e of entries) {
    const type = e.type ?? 'file';
    const body = type === 'file' ? Buffer.from(e.content ?? '') : undefined;
    const header = {
      name: e.name,
      type,
      mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: EPOCH,
      linkname: e.linkname,
      devmajor: e.devmajor,
      devminor: e.devminor,
      pax: e.pax,
      size: body?.length ?? 0,
    } as unknown as tar.Header;
    await new Promise<void>((resolve, reject) => pack.entry(header, body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));
  }
  pack.finalize();
  await done;
  return Buffer.concat(out);
}

const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

export interface OciArchive {
  archivePath: string;
  name: string;
  diffIds: string[];
  /** identity.ChainID of the layers: the committed snapshot an unpack ends with. */
  chainId: string;
  /** The layer blobs' digests, in order. */
  layerDigests: string[];
}

/** containerd's identity.ChainID. */
export function chainId(diffIds: string[]): string {
  let id = diffIds[0]!;
  for (const d of diffIds.slice(1)) id = sha256(Buffer.from(`${id} ${d}`));
  return id;
}

/**
 * Writes an OCI image layout archive (as `ctr images import` takes it) of the given
 * uncompressed layers, each stored gzip-compressed unless `compression` says otherwise.
 */
export async function ociArchive(
  dir: string,
  name: string,
  layers: Buffer[],
  opts: { compression?: 'gzip' | 'none'; gzipLayers?: Buffer[]; perLayer?: ('gzip' | 'none' | 'zstd')[] } = {},
): Promise<OciArchive> {
  const layout = await fs.mkdtemp(path.join(dir, 'layout-'));
  const blobs = path.join(layout, 'blobs', 'sha256');
  await fs.mkdir(blobs, { recursive: true });
  const put = async (b: Buffer) => {
    const d = sha256(b);
    await fs.writeFile(path.join(blobs, d.slice(7)), b);
    return { digest: d, size: b.length };
  };
  const gzip = (opts.compression ?? 'gzip') === 'gzip';
  const layerDescs = [];
  const diffIds = layers.map(sha256);
  for (let i = 0; i < layers.length; i++) {
    const how = opts.perLayer?.[i] ?? (gzip ? 'gzip' : 'none');
    if (how === 'zstd') {
      const blob = execFileSync('zstd', ['-q', '-c'], { input: layers[i]!, maxBuffer: 1 << 30 });
      layerDescs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', ...(await put(blob)) });
      continue;
    }
    const blob = opts.gzipLayers?.[i] ?? (how === 'gzip' ? zlib.gzipSync(layers[i]!) : layers[i]!);
    layerDescs.push({ mediaType: how === 'gzip' ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar', ...(await put(blob)) });
  }
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds }, history: [] }));
  const configDesc = { mediaType: 'application/vnd.oci.image.config.v1+json', ...(await put(config)) };
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: configDesc, layers: layerDescs }));
  const manifestDesc = { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...(await put(manifest)) };
  const tag = name.slice(name.lastIndexOf(':') + 1);
  const index = { schemaVersion: 2, manifests: [{ ...manifestDesc, annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': tag } }] };
  await fs.writeFile(path.join(layout, 'index.json'), JSON.stringify(index));
  await fs.writeFile(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const archivePath = `${layout}.tar`;
  await execFileP('tar', ['-C', layout, '--owner=0', '--group=0', '--numeric-owner', '-cf', archivePath, 'oci-layout', 'index.json', 'blobs']);
  await fs.rm(layout, { recursive: true, force: true });
  return { archivePath, name, diffIds, chainId: chainId(diffIds), layerDigests: layerDescs.map((l) => l.digest) };
}

/** One path of a tree as the tests compare it (times left out: they legitimately differ). */
export interface TreeEntry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  link?: string;
  rdev?: number;
  /** Other paths of the tree sharing this inode (hardlinks), sorted. */
  links?: string[];
  xattrs?: Record<string, string>;
}

function kind(st: import('node:fs').Stats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return 'unknown';
}

/** Every path under `root` (relative, "." for the root) with type, mode, owner, content, link target. */
export async function describeTree(root: string): Promise<Record<string, TreeEntry>> {
  const out: Record<string, TreeEntry> = {};
  const inodes = new Map<string, string[]>();
  const walk = async (rel: string) => {
    const abs = rel === '.' ? root : path.join(root, rel);
    const st = await fs.lstat(abs).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
      return undefined;
    });
    if (!st) {
      // Listed but not there: an overlay whiteout in a directory no lower layer has.
      out[rel] = { type: 'listed-only', mode: '', uid: -1, gid: -1 };
      return;
    }
    const e: TreeEntry = { type: kind(st), mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
    if (st.isFile()) {
      e.size = st.size;
      e.sha256 = createHash('sha256').update(await fs.readFile(abs)).digest('hex');
    }
    if (st.isSymbolicLink()) e.link = await fs.readlink(abs);
    if (st.isCharacterDevice() || st.isBlockDevice()) e.rdev = st.rdev;
    if (!st.isDirectory() && st.nlink > 1) {
      const k = `${st.dev}:${st.ino}`;
      (inodes.get(k) ?? inodes.set(k, []).get(k)!).push(rel);
    }
    out[rel] = e;
    if (st.isDirectory()) for (const n of (await fs.readdir(abs)).sort()) await walk(rel === '.' ? n : `${rel}/${n}`);
  };
  await walk('.');
  for (const group of inodes.values()) {
    if (group.length < 2) continue;
    for (const p of group) out[p]!.links = group.filter((q) => q !== p).sort();
  }
  return out;
}

export interface TarEntry {
  name: string;
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size: number;
  sha256?: string;
  linkname?: string;
}

/** The entries of a layer blob (gzip or not), times left out. */
export async function tarEntries(blob: Buffer): Promise<TarEntry[]> {
  const raw = blob[0] === 0x1f && blob[1] === 0x8b ? zlib.gunzipSync(blob) : blob;
  const extract = tar.extract();
  const out: TarEntry[] = [];
  const reading = (async () => {
    for await (const entry of extract) {
      const h = entry.header;
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      const data = Buffer.concat(chunks);
      out.push({
        name: h.name,
        type: h.type ?? 'file',
        mode: ((h.mode ?? 0) & 0o7777).toString(8),
        uid: h.uid ?? 0,
        gid: h.gid ?? 0,
        size: h.size ?? 0,
        ...(h.type === 'file' ? { sha256: createHash('sha256').update(data).digest('hex') } : {}),
        ...(h.linkname ? { linkname: h.linkname } : {}),
      });
    }
  })();
  Readable.from([raw]).pipe(extract as unknown as NodeJS.WritableStream);
  await reading;
  return out;
}
