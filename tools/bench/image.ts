// A multi-layer gzip image of random (incompressible) files, built locally as an OCI
// archive for `ctr images import`: no network, no pulls. Each variant has its own content,
// so every import round writes and unpacks every byte on both sides (a repeated image
// would be found in the content store and skipped).
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { promisify } from 'node:util';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';

const execFileP = promisify(execFile);
const RECIPE = 'bench-layers-v1';

export interface LayeredImageOptions {
  layers: number;
  filesPerLayer: number;
  fileSize: number;
  /** Distinguishes images of the same shape; each variant has different content. */
  variant: number;
}

export interface LayeredImage {
  archivePath: string;
  name: string;
  manifestDigest: string;
  /** Total size of the compressed layers. */
  layerBytes: number;
}

const GOARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };

function hashing(h: ReturnType<typeof createHash>): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      h.update(chunk);
      cb(null, chunk);
    },
  });
}

async function writeLayer(blobsDir: string, tmp: string, layer: number, opts: LayeredImageOptions): Promise<{ digest: string; size: number; diffId: string }> {
  const pack = tar.pack();
  const diff = createHash('sha256');
  const comp = createHash('sha256');
  const done = pipeline(pack, hashing(diff), createGzip({ level: 1 }), hashing(comp), createWriteStream(tmp));
  const dir = `layer${layer}`;
  pack.entry({ name: dir, type: 'directory', mode: 0o755, mtime: new Date(0) });
  for (let f = 0; f < opts.filesPerLayer; f++) {
    const entry = pack.entry({ name: `${dir}/file${f}`, size: opts.fileSize, mode: 0o644, mtime: new Date(0) });
    for (let off = 0; off < opts.fileSize; off += 1 << 20) {
      const chunk = randomBytes(Math.min(1 << 20, opts.fileSize - off));
      if (off + chunk.length >= opts.fileSize) entry.end(chunk);
      else if (!entry.write(chunk)) await new Promise<void>((r) => entry.once('drain', () => r()));
    }
  }
  pack.finalize();
  await done;
  const digest = comp.digest('hex');
  const size = (await fs.stat(tmp)).size;
  await fs.rename(tmp, path.join(blobsDir, digest));
  return { digest: `sha256:${digest}`, size, diffId: `sha256:${diff.digest('hex')}` };
}

async function writeBlob(blobsDir: string, value: unknown): Promise<{ digest: string; size: number }> {
  const data = Buffer.from(JSON.stringify(value));
  const digest = createHash('sha256').update(data).digest('hex');
  await fs.writeFile(path.join(blobsDir, digest), data);
  return { digest: `sha256:${digest}`, size: data.length };
}

/** Builds (or reuses from `<tmpdir>/flotilla-bench-images`) the archive for `opts`. */
export async function buildLayeredImage(opts: LayeredImageOptions): Promise<LayeredImage> {
  const key = `${RECIPE}-${opts.layers}x${opts.filesPerLayer}x${opts.fileSize}-v${opts.variant}`;
  const cacheDir = path.join(os.tmpdir(), 'flotilla-bench-images');
  const archivePath = path.join(cacheDir, `${key}.tar`);
  const metaPath = `${archivePath}.json`;
  if (await fs.stat(archivePath).then(() => true, () => false)) {
    return { archivePath, ...(JSON.parse(await fs.readFile(metaPath, 'utf8')) as Omit<LayeredImage, 'archivePath'>) };
  }
  await fs.mkdir(cacheDir, { recursive: true });
  const work = await fs.mkdtemp(path.join(cacheDir, 'build-'));
  try {
    const blobsDir = path.join(work, 'blobs', 'sha256');
    await fs.mkdir(blobsDir, { recursive: true });
    const layers = [];
    for (let l = 0; l < opts.layers; l++) layers.push(await writeLayer(blobsDir, path.join(work, `layer${l}.tmp`), l, opts));
    const config = await writeBlob(blobsDir, {
      architecture: GOARCH[process.arch] ?? process.arch,
      os: 'linux',
      config: { Env: ['PATH=/bin'], Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    });
    const manifest = await writeBlob(blobsDir, {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.size })),
    });
    const name = `flotilla.bench/layers:v${opts.variant}`;
    await fs.writeFile(path.join(work, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    await fs.writeFile(
      path.join(work, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': `v${opts.variant}` } }],
      }),
    );
    const meta = { name, manifestDigest: manifest.digest, layerBytes: layers.reduce((a, l) => a + l.size, 0) };
    const tmp = `${archivePath}.${process.pid}`;
    await execFileP('tar', ['-C', work, '--owner=0', '--group=0', '--numeric-owner', '-cf', tmp, 'oci-layout', 'index.json', 'blobs']);
    await fs.writeFile(metaPath, JSON.stringify(meta));
    await fs.rename(tmp, archivePath);
    return { archivePath, ...meta };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}
