// Builds small layer tars in memory for tests, in the spirit of containerd's tartest
// helpers: each helper is one entry; `tarOf` packs them in order.
import { gzipSync } from 'node:zlib';
import { Readable } from 'node:stream';
import tar from 'tar-stream';

type Hdr = Omit<Partial<tar.Header>, 'pax'> & { name: string; pax?: Record<string, string> };
export type TarEntry = { header: Hdr; body?: Buffer };

const uid = process.getuid?.() ?? 0;
const gid = process.getgid?.() ?? 0;
const mtime = new Date('2023-01-02T03:04:05Z');

export const dir = (name: string, mode = 0o755, extra: Omit<Partial<tar.Header>, 'pax'> = {}): TarEntry => ({ header: { name, type: 'directory', mode, uid, gid, mtime, ...extra } });
export const file = (name: string, content: string | Buffer, mode = 0o644, extra: Omit<Partial<tar.Header>, 'pax'> & { pax?: Record<string, string> } = {}): TarEntry => ({
  header: { name, type: 'file', mode, uid, gid, mtime, ...extra },
  body: Buffer.from(content),
});
/** A symlink at `name` pointing at `target` (tartest's Symlink(oldname=target, newname=name)). */
export const symlink = (target: string, name: string): TarEntry => ({ header: { name, type: 'symlink', linkname: target, mode: 0o777, uid, gid, mtime } });
/** A hardlink at `name` to `target`. */
export const link = (target: string, name: string, mode = 0o644, extra: Omit<Partial<tar.Header>, 'pax'> = {}): TarEntry => ({ header: { name, type: 'link', linkname: target, mode, uid, gid, mtime, ...extra } });
export const chardev = (name: string, major: number, minor: number): TarEntry => ({ header: { name, type: 'character-device', devmajor: major, devminor: minor, mode: 0o600, uid, gid, mtime } });
export const fifo = (name: string): TarEntry => ({ header: { name, type: 'fifo', mode: 0o640, uid, gid, mtime } });

export async function tarOf(...entries: TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  })();
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (e.body) pack.entry({ ...e.header, size: e.body.length } as tar.Header, e.body, cb);
      else pack.entry(e.header as tar.Header, cb);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export const gzip = (b: Buffer) => gzipSync(b);
export const streamOf = (b: Buffer) => Readable.from([b]);
export const TAR = 'application/vnd.oci.image.layer.v1.tar';
export const TGZ = 'application/vnd.oci.image.layer.v1.tar+gzip';
