// The local-disk backend. Layout under root:
//   blobs/sha256/<hex>       committed blobs, read-only (0444)
//   ingest/<key>/data        bytes written so far
//   ingest/<key>/meta.json   {ref, total, startedAt, updatedAt}, replaced atomically
// A blob appears only by rename(2) of a fully written, fsynced and verified file, and
// the directory is fsynced after it, so a crash never leaves a partial blob visible.
// An ingest survives a restart: a new writer re-hashes its data and continues.
import fsSync, { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Hash } from 'node:crypto';
import { errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound } from '@flotilla/errdefs';
import type { Backend, BlobStat, IngestStatus, IngestWriter, Vouched } from './backend.js';
import { preciseNow } from '@flotilla/api';
import { canonicalDigester, digestError, digestOf } from './digest.js';

interface IngestMeta {
  ref: string;
  total: number;
  startedAt: number;
  updatedAt: number;
}

/** Bytes a read keeps in flight ahead of what it has yielded. */
const READ_AHEAD = 4 * 1024 * 1024;
/**
 * Reads up to this size (manifests, configs, indexes: what `ctr run` reads ten of) are done
 * with synchronous calls: three short syscalls cost less than three trips through libuv's
 * thread pool, and block the loop for microseconds.
 */
const SMALL_READ = 64 * 1024;

/** [offset, offset+length) of a blob, synchronously; short only if the file is. */
function readSmall(file: string, dgst: string, offset: number, length: number): Buffer {
  let fd: number;
  try {
    fd = fsSync.openSync(file, 'r');
  } catch (err) {
    throw enoent(err) ? errNotFound(`content digest ${dgst}`) : err;
  }
  try {
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const n = fsSync.readSync(fd, buf, got, length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    return got === length ? buf : buf.subarray(0, got);
  } finally {
    fsSync.closeSync(fd);
  }
}

/** Writes all of `data` at `position` (a pwrite may take less than it is given). */
async function writeAt(fh: fs.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) done += (await fh.write(data, done, data.length - done, position + done)).bytesWritten;
}

const enoent = (err: unknown) => (err as NodeJS.ErrnoException)?.code === 'ENOENT';

async function fsyncPath(p: string): Promise<void> {
  const fh = await fs.open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Replaces `file` with `data` atomically and durably. */
async function writeAtomic(file: string, data: string): Promise<void> {
  const tmp = `${file}.tmp`;
  const fh = await fs.open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
}

class DiskIngestWriter implements IngestWriter {
  private fh: fs.FileHandle | undefined;
  /** How far `hash` has taken the data (less than offset after vouched writes). */
  private hashedTo: number;
  /** The digest at `vouched.offset` as the writer's caller computed it. */
  private vouched: Vouched | undefined;
  /**
   * The last vouched write, left running when write() returned (see writeBehind). It never
   * rejects: a failure is kept in `failed`.
   */
  private running: Promise<void> | undefined;
  /** The first failed write left running, and where it began: the data is good only up to there. */
  private failed: { err: unknown; at: number } | undefined;
  constructor(
    private readonly backend: DiskBackend,
    private readonly dir: string,
    private meta: IngestMeta,
    fh: fs.FileHandle,
    public offset: number,
    private hash: Hash,
  ) {
    this.fh = fh;
    this.hashedTo = offset;
  }

  status(): IngestStatus {
    return { ref: this.meta.ref, offset: this.offset, total: this.meta.total, startedAt: this.meta.startedAt, updatedAt: this.meta.updatedAt };
  }

  digest(): string {
    if (this.hashedTo === this.offset) return digestOf(this.hash);
    if (this.vouched?.offset === this.offset) return this.vouched.digest;
    throw new Error('ingest digest asked for before settle()');
  }

  vouch(vouched: Vouched): void {
    if (vouched.offset === this.offset) this.vouched = vouched;
  }

  /** The digest is known at the offset once this resolves: every write has landed. */
  async settle(): Promise<void> {
    await this.drain();
    if (this.hashedTo !== this.offset && this.vouched?.offset !== this.offset) await this.catchUp();
  }

  /**
   * Waits for the write left running. After a failed one, the data file is cut back to
   * where that write began (a resumed ingest takes the file's size as its offset) and the
   * failure is thrown, to this call and every later one.
   */
  private async drain(): Promise<void> {
    const r = this.running;
    if (r) {
      await r;
      if (this.running === r) this.running = undefined;
    }
    const f = this.failed;
    if (!f) return;
    if (this.offset > f.at) {
      this.offset = f.at;
      this.vouched = undefined;
      await this.fh?.truncate(f.at).catch(() => {});
    }
    throw f.err;
  }

  /** Hashes the bytes written unhashed, read back from the data file (after drain()). */
  private async catchUp(): Promise<void> {
    const fh = this.handle();
    const buf = Buffer.allocUnsafe(Math.min(1 << 20, this.offset - this.hashedTo));
    while (this.hashedTo < this.offset) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, this.offset - this.hashedTo), this.hashedTo);
      if (bytesRead === 0) throw new Error(`ingest ${this.meta.ref}: data file ends at ${this.hashedTo}, before offset ${this.offset}`);
      this.hash.update(buf.subarray(0, bytesRead));
      this.hashedTo += bytesRead;
    }
  }

  private handle(): fs.FileHandle {
    if (!this.fh) throw errFailedPrecondition('cannot use a closed writer');
    return this.fh;
  }

  async write(data: Uint8Array, at?: number, vouched?: Vouched): Promise<void> {
    const fh = this.handle();
    // Vouched for: not hashed here (settle() or a later unvouched write reads it back if
    // it must). Otherwise the hash must first take what was written unhashed before.
    const hashing = vouched?.offset !== this.offset + data.length;
    if (!hashing) return this.writeBehind(fh, data, at, vouched!);
    await this.drain();
    if (this.hashedTo < this.offset) await this.catchUp();
    // The write runs on libuv's thread pool while this thread hashes the same bytes.
    const written = writeAt(fh, data, this.offset);
    // A failed write leaves offset and digest where they were (a retry at the same offset
    // overwrites whatever part landed), so the state to restore is kept.
    const before = this.hash.copy();
    this.hash.update(data);
    try {
      await written;
    } catch (err) {
      this.hash = before;
      throw err;
    }
    this.offset += data.length;
    this.hashedTo = this.offset;
    this.vouched = undefined;
    this.meta.updatedAt = at ?? preciseNow();
  }

  /**
   * A vouched write (the gateway's pipelined stream) is left running when this returns,
   * once the write before it has finished: the next message's write can then start the
   * moment this one ends (the kernel runs writes to one file one at a time), not after this
   * thread has answered the step and taken the next. At most two are in flight; each keeps
   * its own buffer. The offset counts the running write: it is where the next one goes,
   * and a failure takes it back (drain).
   */
  private async writeBehind(fh: fs.FileHandle, data: Uint8Array, at: number | undefined, vouched: Vouched): Promise<void> {
    if (this.failed) await this.drain();
    const start = this.offset;
    const before = this.running;
    this.running = writeAt(fh, data, start).catch((err: unknown) => {
      if (!this.failed || start < this.failed.at) this.failed = { err, at: start };
    });
    this.offset += data.length;
    this.vouched = vouched;
    this.meta.updatedAt = at ?? preciseNow();
    await before;
    if (this.failed) await this.drain();
  }

  async truncate(size: number): Promise<void> {
    if (size !== 0) throw errInvalidArgument('Truncate: unsupported size');
    await this.drain();
    await this.handle().truncate(0);
    this.hash = canonicalDigester();
    this.offset = 0;
    this.hashedTo = 0;
    this.vouched = undefined;
  }

  async commit(size: number, expected: string): Promise<{ digest: string; size: number }> {
    await this.settle();
    const fh = this.handle();
    this.fh = undefined;
    let actualSize: number;
    try {
      await fh.sync();
      actualSize = (await fh.stat()).size;
    } finally {
      await fh.close();
    }
    if (size > 0 && size !== actualSize) throw errFailedPrecondition(`unexpected commit size ${actualSize}, expected ${size}`);
    const dgst = this.digest();
    if (expected && expected !== dgst) throw errFailedPrecondition(`unexpected commit digest ${dgst}, expected ${expected}`);
    const target = this.backend.blobPath(dgst);
    const exists = await fs.stat(target).then(() => true, (e) => (enoent(e) ? false : Promise.reject(e)));
    if (exists) {
      await fs.rm(this.dir, { recursive: true, force: true });
      throw errAlreadyExists(`content ${dgst}`);
    }
    const data = path.join(this.dir, 'data');
    // Read-only before it is visible, so no one ever sees a writable blob.
    await fs.chmod(data, 0o444);
    await fs.rename(data, target);
    await fsyncPath(path.dirname(target));
    await fs.rm(this.dir, { recursive: true, force: true });
    return { digest: dgst, size: actualSize };
  }

  async close(): Promise<void> {
    const fh = this.fh;
    if (!fh) return;
    // A failed write's error went to the step that saw it; here only its cut matters.
    await this.drain().catch(() => {});
    this.fh = undefined;
    try {
      // The data file's mtime stands in for updatedAt after a crash (ingestStatus, resume
      // take the later of the two). A pipelined write's updatedAt is when the gateway
      // accepted it, which the bytes reach the disk after: on a clean close the file takes
      // that time, so a resumed writer and Status keep reporting it (containerd's
      // testsuite checks a resumed ingest's updated_at is the last write's).
      await fh.utimes(Date.now() / 1000, this.meta.updatedAt / 1000);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await writeAtomic(path.join(this.dir, 'meta.json'), JSON.stringify(this.meta)).catch((e) => {
      if (!enoent(e)) throw e; // aborted meanwhile
    });
  }
}

export class DiskBackend implements Backend {
  readonly kind = 'local';
  constructor(readonly root: string) {}

  async init(): Promise<void> {
    await fs.mkdir(path.join(this.root, 'blobs', 'sha256'), { recursive: true });
    await fs.mkdir(path.join(this.root, 'ingest'), { recursive: true });
  }

  blobPath(dgst: string): string {
    const why = digestError(dgst);
    if (why) throw errInvalidArgument(`cannot calculate blob path from invalid digest: ${why}`);
    const [alg, hex] = dgst.split(':') as [string, string];
    return path.join(this.root, 'blobs', alg, hex);
  }

  private ingestDir(key: string): string {
    if (!/^[A-Za-z0-9_-]+$/.test(key)) throw errInvalidArgument(`invalid ingest key ${JSON.stringify(key)}`);
    return path.join(this.root, 'ingest', key);
  }

  async stat(dgst: string): Promise<BlobStat> {
    try {
      return { size: (await fs.stat(this.blobPath(dgst))).size };
    } catch (err) {
      if (enoent(err)) throw errNotFound(`content digest ${dgst}`);
      throw err;
    }
  }

  async *read(dgst: string, offset: number, length: number, chunk: number): AsyncGenerator<{ offset: number; data: Uint8Array }> {
    // The caller has checked a given range against the blob's size: no stat then.
    const end = length > 0 ? offset + length : (await this.stat(dgst)).size;
    if (end <= offset) return;
    // Exactly [offset, end) with positioned reads, a few pieces (up to 4 MiB) read ahead
    // while earlier ones are sent, so a bus batch can carry several, and the file closed
    // before the last piece is yielded: the generator then ends as soon as its consumer
    // asks again, so a small Read's only batch carries end-of-stream (one bus round trip,
    // not two).
    if (end - offset <= Math.min(SMALL_READ, chunk)) {
      const data = readSmall(this.blobPath(dgst), dgst, offset, end - offset);
      if (data.length > 0) yield { offset, data };
      return;
    }
    const fh = await fs.open(this.blobPath(dgst), 'r').catch((err) => {
      throw enoent(err) ? errNotFound(`content digest ${dgst}`) : err;
    });
    const readAt = async (pos: number): Promise<Buffer> => {
      const want = Math.min(chunk, end - pos);
      const buf = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, pos + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got === want ? buf : buf.subarray(0, got);
    };
    const depth = Math.max(1, Math.min(8, Math.floor(READ_AHEAD / chunk)));
    const ahead: Promise<Buffer>[] = [];
    let queued = offset; // where the next read-ahead starts
    const fill = () => {
      while (ahead.length < depth && queued < end) {
        const p = readAt(queued);
        p.catch(() => {}); // observed when its turn comes, or dropped with the generator
        ahead.push(p);
        queued += Math.min(chunk, end - queued);
      }
    };
    let open = true;
    try {
      let pos = offset;
      for (;;) {
        fill();
        const want = Math.min(chunk, end - pos);
        const data = await ahead.shift()!;
        if (data.length === 0) return; // blobs are immutable: cannot happen
        const next = pos + data.length;
        if (next >= end || data.length < want) {
          open = false;
          await Promise.allSettled(ahead.splice(0));
          await fh.close();
          yield { offset: pos, data };
          return;
        }
        fill();
        yield { offset: pos, data };
        pos = next;
      }
    } finally {
      if (open) {
        await Promise.allSettled(ahead.splice(0));
        await fh.close();
      }
    }
  }

  async delete(dgst: string): Promise<void> {
    await fs.rm(this.blobPath(dgst), { force: true });
  }

  private async readMeta(dir: string): Promise<IngestMeta | undefined> {
    try {
      return JSON.parse(await fs.readFile(path.join(dir, 'meta.json'), 'utf8')) as IngestMeta;
    } catch (err) {
      if (enoent(err) || err instanceof SyntaxError) return undefined;
      throw err;
    }
  }

  async writer(key: string, ref: string, total: number): Promise<IngestWriter> {
    const dir = this.ingestDir(key);
    await fs.mkdir(dir, { recursive: true });
    const dataPath = path.join(dir, 'data');
    let meta = await this.readMeta(dir);
    // As containerd's local store: an ingest for another ref or another total is not
    // resumable; start over.
    const resumable = meta !== undefined && meta.ref === ref && !(total > 0 && meta.total > 0 && total !== meta.total);
    const fh = await fs.open(dataPath, resumable ? 'a+' : 'w+');
    await fh.close();
    const rw = await fs.open(dataPath, 'r+');
    const hash = canonicalDigester();
    let offset = 0;
    try {
      if (resumable) {
        const st = await rw.stat();
        for await (const buf of createReadStream('', { fd: rw.fd, autoClose: false, start: 0, highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
          hash.update(buf);
          offset += buf.length;
        }
        meta = { ...meta!, total: meta!.total || total, updatedAt: Math.max(meta!.updatedAt, st.mtimeMs) };
      } else {
        const now = preciseNow();
        meta = { ref, total, startedAt: now, updatedAt: now };
      }
      await writeAtomic(path.join(dir, 'meta.json'), JSON.stringify(meta));
    } catch (err) {
      await rw.close();
      throw err;
    }
    return new DiskIngestWriter(this, dir, meta, rw, offset, hash);
  }

  async ingestStatus(key: string): Promise<IngestStatus> {
    const dir = this.ingestDir(key);
    try {
      const [meta, st] = await Promise.all([this.readMeta(dir), fs.stat(path.join(dir, 'data'))]);
      if (!meta) throw errNotFound(`ingest ${key}`);
      // After a crash the data file is newer than the last saved meta.
      return { ref: meta.ref, offset: st.size, total: meta.total, startedAt: meta.startedAt, updatedAt: Math.max(meta.updatedAt, st.mtimeMs) };
    } catch (err) {
      if (enoent(err)) throw errNotFound(`ingest ${key}`);
      throw err;
    }
  }

  async abort(key: string): Promise<void> {
    const dir = this.ingestDir(key);
    const exists = await fs.stat(dir).then(() => true, (e) => (enoent(e) ? false : Promise.reject(e)));
    if (!exists) throw errNotFound(`ingest ref ${JSON.stringify(key)}`);
    await fs.rm(dir, { recursive: true, force: true });
  }
}
