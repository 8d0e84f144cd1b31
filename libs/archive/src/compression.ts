// Layer media types and their decompression, as containerd's diff processors and
// archive/compression treat them: compressed types are sniffed by magic number (so a
// mislabelled uncompressed blob still applies), the OCI uncompressed type is read as is.
import { PassThrough, type Readable } from 'node:stream';
import zlib from 'node:zlib';
import { errNotImplemented } from '@flotilla/errdefs';

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

/** Whether applyLayer knows the media type (zstd ones are known but refused at apply time). */
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
 * (containerd: no stream processor for the media type); so is zstd, which this Node lacks.
 */
export async function decompressLayer(src: Readable, mediaType: string): Promise<Readable> {
  const handling = LAYER_MEDIA_TYPES.get(mediaType);
  if (!handling) throw errNotImplemented(`failed to get stream processor for ${mediaType}: no processor for media-type`);
  if (handling === 'none') return src;
  const { head, stream } = await peek(src, 4);
  if (head[0] === 0x1f && head[1] === 0x8b && head[2] === 0x08) {
    const gunzip = zlib.createGunzip();
    stream.on('error', (err) => gunzip.destroy(err));
    return stream.pipe(gunzip);
  }
  if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) {
    stream.destroy();
    throw errNotImplemented(`zstd-compressed layers (${mediaType})`);
  }
  return stream;
}
