// Layer media types and their decompression, as containerd's diff processors and
// archive/compression treat them: compressed types are sniffed by magic number (so a
// mislabelled uncompressed blob still applies), the OCI uncompressed type is read as is.
import { spawn } from 'node:child_process';
import { PassThrough, type Readable } from 'node:stream';
import zlib from 'node:zlib';
import { errInvalidArgument, errNotImplemented, errUnknown } from '@flotilla/errdefs';

/**
 * Output buffer of gunzip: 16x node's default, so a 50 MiB layer is ~200 inflate steps
 * and file writes instead of ~3200, each carrying per-step stream overhead; larger ones
 * only add page faults on fresh memory.
 */
const GUNZIP_CHUNK = 256 * 1024;

/** How a layer media type is to be decompressed. */
type Handling = 'none' | 'detect';

const LAYER_MEDIA_TYPES: ReadonlyMap<string, Handling> = new Map([
  ['application/vnd.oci.image.layer.v1.tar', 'none'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar', 'none'],
  ['application/vnd.oci.image.layer.v1.tar+gzip', 'detect'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', 'detect'],
  ['application/vnd.oci.image.layer.v1.tar+zstd', 'detect'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar+zstd', 'detect'],
  ['application/vnd.docker.image.rootfs.diff.tar', 'detect'],
  ['application/vnd.docker.image.rootfs.diff.tar.gzip', 'detect'],
  ['application/vnd.docker.image.rootfs.foreign.diff.tar', 'detect'],
  ['application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', 'detect'],
]);

/** Whether applyLayer knows the media type. */
export function isLayerMediaType(mediaType: string): boolean {
  return LAYER_MEDIA_TYPES.has(mediaType);
}

/** The first `n` bytes of `src` (fewer at end of stream), and a stream replaying all of it. */
async function peek(src: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const chunks: Buffer[] = [];
  let have = 0;
  for (;;) {
    if (have >= n) break;
    const chunk: Buffer | null = src.read();
    if (chunk !== null) {
      chunks.push(chunk);
      have += chunk.length;
      continue;
    }
    if (src.readableEnded) break;
    const ended = await new Promise<boolean>((resolve, reject) => {
      const done = (v: boolean) => {
        src.off('readable', onReadable);
        src.off('end', onEnd);
        src.off('error', onError);
        resolve(v);
      };
      const onReadable = () => done(false);
      const onEnd = () => done(true);
      const onError = (err: Error) => {
        src.off('readable', onReadable);
        src.off('end', onEnd);
        reject(err);
      };
      src.once('readable', onReadable);
      src.once('end', onEnd);
      src.once('error', onError);
    });
    if (ended) break;
  }
  const head = Buffer.concat(chunks);
  const out = new PassThrough();
  out.write(head);
  src.on('error', (err) => out.destroy(err));
  src.pipe(out);
  return { head, stream: out };
}

/**
 * The uncompressed tar stream of a layer blob. Unknown media types are NotImplemented
 * (containerd: no stream processor for the media type); zstd goes through the zstd tool.
 */
export async function decompressLayer(src: Readable, mediaType: string): Promise<Readable> {
  const handling = LAYER_MEDIA_TYPES.get(mediaType);
  if (!handling) throw errNotImplemented(`failed to get stream processor for ${mediaType}: no processor for media-type`);
  if (handling === 'none') return src;
  const { head, stream } = await peek(src, 4);
  if (head[0] === 0x1f && head[1] === 0x8b && head[2] === 0x08) {
    const gunzip = zlib.createGunzip({ chunkSize: GUNZIP_CHUNK });
    stream.on('error', (err) => gunzip.destroy(err));
    return stream.pipe(gunzip);
  }
  if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return zstdDecompress(stream);
  return stream;
}

/**
 * zstd decompression by the reference implementation's CLI (Debian's zstd package): this
 * Node has no zstd in zlib. A failure of the tool fails the stream with its message;
 * destroying the output (a refused layer) ends the tool.
 */
function zstdDecompress(src: Readable): Readable {
  const child = spawn('zstd', ['-d', '-c', '-q', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d.slice(0, 4096)));
  // Ends only once zstd exited 0: a tool that fails half-way must not look like a short layer.
  const out = new PassThrough();
  child.stdout.pipe(out, { end: false });
  const fail = (err: Error) => {
    if (!out.destroyed) out.destroy(err);
  };
  child.on('error', (err) => fail(errUnknown(`zstd: ${err.message}`, { cause: err })));
  child.on('close', (code, signal) => {
    if (code === 0) out.end();
    else fail(errInvalidArgument(`zstd: ${stderr.trim() || `exited ${code ?? signal}`}`));
  });
  child.stdin.on('error', () => {}); // EPIPE when zstd stops early: its exit says why
  src.on('error', (err) => {
    fail(err);
    child.kill('SIGKILL');
  });
  out.on('close', () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    src.destroy();
  });
  src.pipe(child.stdin);
  return out;
}
