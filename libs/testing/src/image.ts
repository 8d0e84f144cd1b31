// Test images built locally from Debian's busybox-static with umoci: no network, no pulls.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const BUSYBOX = '/bin/busybox';
/** Applets linked in /bin; busybox runs the one named by argv[0]. */
const APPLETS = [
  'sh', 'echo', 'true', 'false', 'sleep', 'cat', 'ls', 'id', 'head', 'tail', 'dd', 'wc', 'env', 'ps', 'kill',
  'mkdir', 'rm', 'touch', 'pwd', 'hostname', 'uname', 'printf', 'test', 'grep', 'sed', 'stat', 'mount', 'date', 'seq', 'yes',
];
/** Bump when the image's layout changes, so cached archives are rebuilt. */
const RECIPE = 'busybox-v2';
const DEFAULT_NAME = 'flotilla.test/busybox:latest';

export interface BusyboxImageOptions {
  /** Image name recorded in the archive; ctr imports it under this name. Default `flotilla.test/busybox:latest`. */
  name?: string;
}

export interface TestImage {
  /** OCI image layout archive (tar), as `ctr images import` takes it. */
  archivePath: string;
  /** The name the image is imported under (`io.containerd.image.name` annotation). */
  name: string;
  /** The image manifest's digest (what `ctr images ls` shows as the target). */
  manifestDigest: string;
  /** The image config's digest. */
  configDigest: string;
  /** The one layer's (gzip) digest. */
  layerDigest: string;
  /** The layer's uncompressed digest; with one layer also the snapshot's chain ID. */
  diffId: string;
}

type Built = Omit<TestImage, 'archivePath'>;

/** The tag part of `name` (`latest` when it has none), which umoci and the OCI ref name carry. */
function tagOf(name: string): string {
  const last = name.slice(name.lastIndexOf('/') + 1);
  const i = last.lastIndexOf(':');
  if (name.includes('@')) throw new Error(`test image name ${name}: a digest reference cannot be built`);
  return i >= 0 ? last.slice(i + 1) : 'latest';
}

/**
 * An OCI archive holding one linux image: one gzip layer with /bin/busybox, applet symlinks
 * (sh, echo, sleep, cat, ...) and /tmp; config Cmd `/bin/sh`, Env `PATH=/bin`. Built once per
 * busybox binary, name and recipe, then cached in `<tmpdir>/flotilla-test-images`.
 *
 * With `dir`, the archive is copied there (the caller may change or delete it); without,
 * the returned path is the shared cache file and must be treated as read-only.
 */
export async function buildBusyboxImage(dir?: string, opts?: BusyboxImageOptions): Promise<TestImage>;
export async function buildBusyboxImage(opts?: BusyboxImageOptions): Promise<TestImage>;
export async function buildBusyboxImage(a?: string | BusyboxImageOptions, b?: BusyboxImageOptions): Promise<TestImage> {
  const dir = typeof a === 'string' ? a : undefined;
  const name = (typeof a === 'object' ? a : b)?.name ?? DEFAULT_NAME;
  const { archivePath, built } = await cached(name);
  if (!dir) return { archivePath, ...built };
  await fs.mkdir(dir, { recursive: true });
  const out = path.join(dir, `${name.replace(/[^A-Za-z0-9._-]+/g, '_')}.tar`);
  await fs.copyFile(archivePath, out);
  return { archivePath: out, ...built };
}

async function cached(name: string): Promise<{ archivePath: string; built: Built }> {
  const bb = await fs.readFile(BUSYBOX).catch(() => {
    throw new Error(`${BUSYBOX} is missing: apt-get install busybox-static`);
  });
  const key = createHash('sha256').update(RECIPE).update('\0').update(name).update('\0').update(APPLETS.join(',')).update('\0').update(bb).digest('hex').slice(0, 24);
  const cacheDir = path.join(os.tmpdir(), 'flotilla-test-images');
  const archivePath = path.join(cacheDir, `busybox-${key}.tar`);
  const metaPath = `${archivePath}.json`;
  // The archive is renamed into place after its metadata, so an archive implies both.
  if (await fs.stat(archivePath).then(() => true, () => false)) {
    const built = JSON.parse(await fs.readFile(metaPath, 'utf8')) as Built;
    return { archivePath, built };
  }
  await fs.mkdir(cacheDir, { recursive: true });
  const work = await fs.mkdtemp(path.join(cacheDir, 'build-'));
  try {
    const layout = path.join(work, 'oci');
    const ref = `${layout}:${tagOf(name)}`;
    const umoci = (...args: string[]) =>
      execFileP('umoci', args).catch((err) => {
        throw new Error(`umoci ${args.join(' ')}: ${err.stderr || err.message}`);
      });
    await umoci('init', '--layout', layout);
    await umoci('new', '--image', ref);
    await umoci('unpack', '--image', ref, path.join(work, 'bundle'));
    const rootfs = path.join(work, 'bundle', 'rootfs');
    await fs.mkdir(path.join(rootfs, 'bin'), { recursive: true });
    await fs.copyFile(BUSYBOX, path.join(rootfs, 'bin', 'busybox'));
    await fs.chmod(path.join(rootfs, 'bin', 'busybox'), 0o755);
    for (const a of APPLETS) await fs.symlink('busybox', path.join(rootfs, 'bin', a));
    await fs.mkdir(path.join(rootfs, 'tmp'));
    await fs.chmod(path.join(rootfs, 'tmp'), 0o1777);
    await umoci('repack', '--image', ref, path.join(work, 'bundle'));
    await umoci('config', '--image', ref, '--config.cmd', '/bin/sh', '--config.env', 'PATH=/bin', '--config.workingdir', '/');
    await umoci('gc', '--layout', layout);

    // ctr names an imported image after `io.containerd.image.name`; the OCI ref name keeps
    // the tag, as containerd's own exporter writes it.
    const indexPath = path.join(layout, 'index.json');
    const index = JSON.parse(await fs.readFile(indexPath, 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
    if (index.manifests.length !== 1) throw new Error(`umoci left ${index.manifests.length} manifests in ${indexPath}`);
    const m = index.manifests[0]!;
    m.annotations = { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': tagOf(name) };
    await fs.writeFile(indexPath, JSON.stringify(index));
    const blob = async (d: string) => JSON.parse(await fs.readFile(path.join(layout, 'blobs', ...d.split(':')), 'utf8'));
    const manifest = await blob(m.digest);
    const config = await blob(manifest.config.digest);
    if (manifest.layers.length !== 1 || !String(manifest.layers[0].mediaType).endsWith('+gzip')) {
      throw new Error(`unexpected layers from umoci: ${JSON.stringify(manifest.layers)}`);
    }
    const built: Built = {
      name,
      manifestDigest: m.digest,
      configDigest: manifest.config.digest,
      layerDigest: manifest.layers[0].digest,
      diffId: config.rootfs.diff_ids[0],
    };
    const tmp = `${archivePath}.${process.pid}`;
    await execFileP('tar', ['-C', layout, '--owner=0', '--group=0', '--numeric-owner', '-cf', tmp, 'oci-layout', 'index.json', 'blobs']);
    await fs.writeFile(metaPath, JSON.stringify(built));
    await fs.rename(tmp, archivePath);
    return { archivePath, built };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}
