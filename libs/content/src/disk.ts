// The local-disk content backend: content-addressed blobs and resumable ingests.
// Layout under root:
//   blobs/sha256/<hex>          committed blobs, read-only (0444), renamed in atomically
//   ingest/<key>/data           bytes written so far
//   ingest/<key>/ref            the client's ref (for listing)
//   ingest/<key>/meta.json      {total, expected, startedAt}
// A blob is visible only once rename has happened and both file and directory are fsynced,
// so nothing that failed verification is ever listed.
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import {
  errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound, isNotFound,
} from '@flotilla/errdefs';

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

export function validateDigest(dgst: string): void {
  if (!DIGEST_RE.test(dgst)) throw errInvalidArgument(`invalid digest ${JSON.stringify(dgst)}`);
}

export interface IngestStatus {
  ref: string;
  offset: number;
  total: number;
  expected: string;
  startedAt: number;
  updatedAt: number;
}

function enoent(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'ENOENT';
}

/** An open ingest: appends bytes while hashing them. One writer per ref at a time. */
export class Ingest {
  private hash: Hash;
  constructor(
    readonly store: DiskStore,
    readonly key: string,
    readonly ref: string,
    private fh: fs.FileHandle,
    public offset: number,
    hash: Hash,
    public total: number,
    public expected: string,
    readonly startedAt: number,
    public updatedAt: number,
  ) {
    this.hash = hash;
  }

  get dir(): string {
    return this.store.ingestDir(this.key);
  }

  digest(): string {
    return 'sha256:' + this.hash.copy().digest('hex');
  }

  status(): IngestStatus {
    return { ref: this.ref, offset: this.offset, total: this.total, expected: this.expected, startedAt: this.startedAt, updatedAt: this.updatedAt };
  }

  async write(data: Uint8Array): Promise<void> {
    if (this.total > 0 && this.offset + data.length > this.total) {
      throw errFailedPrecondition(`write of ${data.length} bytes at ${this.offset} exceeds expected size ${this.total}`);
    }
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, this.offset + done);
      done += bytesWritten;
    }
    this.hash.update(data);
    this.offset += data.length;
    this.updatedAt = Date.now();
  }

  async truncate(size: number): Promise<void> {
    if (size !== 0) throw errInvalidArgument('truncate is only supported to 0');
    await this.fh.truncate(0);
    this.hash = createHash('sha256');
    this.offset = 0;
    this.updatedAt = Date.now();
  }

  async saveMeta(): Promise<void> {
    await fs.writeFile(path.join(this.dir, 'meta.json'), JSON.stringify({ total: this.total, expected: this.expected, startedAt: this.startedAt }));
  }

  /**
   * Verifies size and digest, then moves the data into blobs/. Returns the digest.
   * Throws AlreadyExists (after removing the ingest) when the blob is already there.
   */
  async commit(size: number, expected: string): Promise<{ digest: string; size: number }> {
    if (size > 0 && size !== this.offset) {
      throw errFailedPrecondition(`unexpected commit size ${this.offset}, expected ${size}`);
    }
    const dgst = this.digest();
    if (expected && expected !== dgst) {
      throw errFailedPrecondition(`unexpected commit digest ${dgst}, expected ${expected}`);
    }
    await this.fh.sync();
    await this.fh.close();
    const target = this.store.blobPath(dgst);
    const exists = await fs.stat(target).then(() => true, (e) => (enoent(e) ? false : Promise.reject(e)));
    if (exists) {
      await fs.rm(this.dir, { recursive: true, force: true });
      throw errAlreadyExists(`content ${dgst}`);
    }
    await fs.chmod(path.join(this.dir, 'data'), 0o444);
    await fs.rename(path.join(this.dir, 'data'), target);
    await fsyncDir(path.dirname(target));
    await fs.rm(this.dir, { recursive: true, force: true });
    return { digest: dgst, size: this.offset };
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class DiskStore {
  constructor(readonly root: string) {}

  async init(): Promise<void> {
    await fs.mkdir(path.join(this.root, 'blobs', 'sha256'), { recursive: true });
    await fs.mkdir(path.join(this.root, 'ingest'), { recursive: true });
  }

  blobPath(dgst: string): string {
    validateDigest(dgst);
    return path.join(this.root, 'blobs', 'sha256', dgst.slice('sha256:'.length));
  }

  ingestDir(key: string): string {
    return path.join(this.root, 'ingest', key);
  }

  /** The ingest directory name for (namespace, ref): refs are client strings, so hash them. */
  static ingestKey(namespace: string, ref: string): string {
    return createHash('sha256').update(namespace).update('\0').update(ref).digest('hex');
  }

  async size(dgst: string): Promise<number> {
    try {
      return (await fs.stat(this.blobPath(dgst))).size;
    } catch (err) {
      if (enoent(err)) throw errNotFound(`content digest ${dgst}`);
      throw err;
    }
  }

  async exists(dgst: string): Promise<boolean> {
    return this.size(dgst).then(() => true, (e) => (isNotFound(e) ? false : Promise.reject(e)));
  }

  /** Reads [offset, offset+size) (size 0: to the end) in chunks of at most `chunk` bytes. */
  async *read(dgst: string, offset: number, size: number, chunk: number): AsyncGenerator<{ offset: number; data: Buffer }> {
    const total = await this.size(dgst);
    if (offset < 0 || offset > total) throw errInvalidArgument(`offset ${offset} out of range for ${dgst} of size ${total}`);
    const end = size > 0 ? Math.min(total, offset + size) : total;
    if (end <= offset) return;
    let pos = offset;
    const stream = createReadStream(this.blobPath(dgst), { start: offset, end: end - 1, highWaterMark: chunk });
    for await (const buf of stream as AsyncIterable<Buffer>) {
      yield { offset: pos, data: buf };
      pos += buf.length;
    }
  }

  async delete(dgst: string): Promise<void> {
    await fs.rm(this.blobPath(dgst), { force: true });
  }

  /** Opens (creating or resuming) the ingest for a key; resuming re-hashes the bytes on disk. */
  async openIngest(key: string, ref: string, total: number, expected: string): Promise<Ingest> {
    const dir = this.ingestDir(key);
    await fs.mkdir(dir, { recursive: true });
    const dataPath = path.join(dir, 'data');
    let meta = { total, expected, startedAt: Date.now() };
    try {
      meta = { ...meta, ...JSON.parse(await fs.readFile(path.join(dir, 'meta.json'), 'utf8')) };
    } catch (err) {
      if (!enoent(err)) throw err;
      await fs.writeFile(path.join(dir, 'ref'), ref);
    }
    const fh = await fs.open(dataPath, 'a+').then(async (h) => {
      await h.close();
      return fs.open(dataPath, 'r+');
    });
    const hash = createHash('sha256');
    let offset = 0;
    const st = await fh.stat();
    if (st.size > 0) {
      for await (const buf of createReadStream('', { fd: fh.fd, autoClose: false, start: 0 }) as AsyncIterable<Buffer>) {
        hash.update(buf);
        offset += buf.length;
      }
    }
    const ing = new Ingest(this, key, ref, fh, offset, hash, total || meta.total || 0, expected || meta.expected || '', meta.startedAt, st.mtimeMs || Date.now());
    await ing.saveMeta();
    return ing;
  }

  async statIngest(key: string): Promise<IngestStatus> {
    const dir = this.ingestDir(key);
    try {
      const [ref, metaRaw, st] = await Promise.all([
        fs.readFile(path.join(dir, 'ref'), 'utf8'),
        fs.readFile(path.join(dir, 'meta.json'), 'utf8').catch(() => '{}'),
        fs.stat(path.join(dir, 'data')),
      ]);
      const meta = JSON.parse(metaRaw);
      return { ref, offset: st.size, total: meta.total ?? 0, expected: meta.expected ?? '', startedAt: meta.startedAt ?? st.birthtimeMs, updatedAt: st.mtimeMs };
    } catch (err) {
      if (enoent(err)) throw errNotFound(`ingest`);
      throw err;
    }
  }

  async abortIngest(key: string): Promise<void> {
    await fs.rm(this.ingestDir(key), { recursive: true, force: true });
  }
}
