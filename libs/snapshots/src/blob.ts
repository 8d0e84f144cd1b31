// Where the diff service's Apply reads a layer blob from. A snapshotter that shares the
// content store's disk reads the local backend's `blobs/sha256/<hex>` itself instead of
// carrying every byte through the content service and nats-server. The blob must still be
// visible in the caller's namespace (a content Info first, whose NotFound is the one a
// Read answers) and the file must have the recorded size. With no such file (another
// node, the S3 backend, a non-sha256 digest) the layer is read over the bus as before.
// The bytes are not hashed again: such a file appears only by rename of a blob its store
// verified at commit, is never written after, and is named by its digest, so any store's
// file of that name holds the same bytes; the content service's Read serves the same file
// unverified too.
import fs from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { content as capi } from '@flotilla/api';
import type { CallContext, Client } from '@flotilla/bus';
import { errFailedPrecondition } from '@flotilla/errdefs';

/** The content service calls a layer read needs. */
export type LayerContent = Pick<Client<typeof capi.ContentDefinition>, 'info' | 'read'>;

export interface LayerSourceOptions {
  /** Where the content store keeps blob `digest` on this host's disk, when it may (see above). */
  localBlobPath?: (digest: string) => string;
  /** Bytes per read of a local blob file. Default 256 KiB. */
  chunk?: number;
}

const SHA256 = /^sha256:[0-9a-f]{64}$/;
const DEFAULT_CHUNK = 256 * 1024;

/**
 * Blob `digest` as a stream of its bytes. Lazy: nothing is asked of the content service or
 * the disk until the stream is first read, so requests refused before that read nothing.
 * Readable.from's buffering keeps up to 16 chunks read ahead of the consumer.
 */
export function layerSource(content: LayerContent, digest: string, ctx: CallContext, opts: LayerSourceOptions = {}): Readable {
  const chunk = opts.chunk ?? DEFAULT_CHUNK;
  return Readable.from(
    (async function* () {
      if (opts.localBlobPath && SHA256.test(digest)) {
        const size = Number((await content.info({ digest }, ctx)).info?.size ?? -1);
        const fh = await fs.open(opts.localBlobPath(digest), 'r').catch(() => undefined);
        if (fh) {
          try {
            if ((await fh.stat()).size === size) {
              yield* blobFile(fh, digest, size, chunk);
              return;
            }
          } finally {
            await fh.close();
          }
        }
      }
      for await (const r of content.read({ digest, offset: 0, size: 0 }, ctx)) yield r.data;
    })(),
  );
}

/** The file's `size` bytes in fresh buffers (it is a committed blob: immutable). */
async function* blobFile(fh: fs.FileHandle, digest: string, size: number, chunk: number): AsyncGenerator<Buffer> {
  let pos = 0;
  while (pos < size) {
    const buf = Buffer.allocUnsafe(Math.min(chunk, size - pos));
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, pos + got);
      if (bytesRead === 0) throw errFailedPrecondition(`content digest ${digest}: blob file ended at ${pos + got} of ${size} bytes`);
      got += bytesRead;
    }
    pos += got;
    yield buf;
  }
}
