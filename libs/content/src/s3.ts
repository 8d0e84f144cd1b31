// The S3 backend (MinIO or any S3-compatible store), through the `minio` client. Keys
// under the configured prefix:
//   blobs/sha256/<hex>                     committed blobs
//   ingest/<key>/meta.json                 {ref, total, startedAt, updatedAt}
//   ingest/<key>/data/<offset, 16 digits>  the ingest's bytes, one object per flushed piece
// S3 has no append, so a writer buffers up to `partSize` bytes in memory and uploads them
// as the next data object; close() uploads the rest. Every PUT is atomic, so after a crash
// the ingest holds exactly the data objects that were uploaded, contiguous from offset 0
// (anything past a gap is dropped), and Status reports that offset for the client to
// resume from. The sha256 is computed from the bytes as they stream in, never taken from
// an ETag; a Hash cannot be saved, so a resuming writer re-reads the data objects to
// rebuild it, as containerd's local store re-reads its data file.
//
// A blob key is written only after the digest has been verified: by one PUT (ingest
// still in memory), a server-side copy (one data object), or a multipart upload to the
// blob key whose bytes are re-read from the data objects and hashed again, completed only
// when that hash matches (S3 shows a multipart object only once it is complete). The
// copy goes through this process because UploadPartCopy needs parts of at least 5 MiB,
// which close() does not guarantee, and s3rver (the test server) lacks it.
import { Readable } from 'node:stream';
import type { Hash } from 'node:crypto';
import { Client } from 'minio';
import { errAlreadyExists, errFailedPrecondition, errInvalidArgument, errNotFound } from '@flotilla/errdefs';
import type { Backend, BlobStat, IngestStatus, IngestWriter } from './backend.js';
import { preciseNow } from '@flotilla/api';
import { canonicalDigester, digestError, digestOf } from './digest.js';

export interface S3BackendOptions {
  /** `http(s)://host[:port]` of the S3 service. */
  endpoint: string;
  bucket: string;
  accessKey: string;
  secretKey: string;
  /** Default us-east-1. */
  region?: string;
  /** Prepended to every key (e.g. `flotilla/`), so a bucket can be shared. */
  prefix?: string;
  /** Bytes buffered per data object and per multipart part; at least 5 MiB (S3's minimum part). Default 8 MiB. */
  partSize?: number;
}

const MIN_PART = 5 * 1024 * 1024;

interface IngestMeta {
  ref: string;
  total: number;
  startedAt: number;
  updatedAt: number;
}

interface DataObject {
  name: string;
  offset: number;
  size: number;
  lastModified: number;
}

/** True for S3's "no such key/object" answers. */
function isMissing(err: unknown): boolean {
  const code = (err as { code?: string })?.code;
  return code === 'NoSuchKey' || code === 'NotFound' || code === 'NoSuchObject';
}

async function readAll(stream: Readable): Promise<Buffer> {
  const bufs: Buffer[] = [];
  for await (const b of stream as AsyncIterable<Buffer>) bufs.push(b);
  return Buffer.concat(bufs);
}

class S3IngestWriter implements IngestWriter {
  private closed = false;
  /** Bytes written since the last uploaded data object. */
  private pending: Buffer[] = [];
  private pendingSize = 0;
  constructor(
    private readonly backend: S3Backend,
    private readonly key: string,
    private meta: IngestMeta,
    /** Uploaded data objects, in offset order. */
    private objects: DataObject[],
    public offset: number,
    private hash: Hash,
  ) {}

  status(): IngestStatus {
    return { ref: this.meta.ref, offset: this.offset, total: this.meta.total, startedAt: this.meta.startedAt, updatedAt: this.meta.updatedAt };
  }

  digest(): string {
    return digestOf(this.hash);
  }

  private live(): void {
    if (this.closed) throw errFailedPrecondition('cannot use a closed writer');
  }

  async write(data: Uint8Array, at?: number): Promise<void> {
    this.live();
    if (data.length === 0) return;
    // A copy: the caller may reuse its buffer once the call returns.
    this.pending.push(Buffer.from(data));
    this.pendingSize += data.length;
    this.hash.update(data);
    this.offset += data.length;
    this.meta.updatedAt = at ?? preciseNow();
    if (this.pendingSize >= this.backend.partSize) await this.flush();
  }

  /** Uploads the buffered bytes as the next data object. */
  private async flush(): Promise<void> {
    if (this.pendingSize === 0) return;
    const body = Buffer.concat(this.pending);
    const at = this.offset - body.length;
    const name = this.backend.dataKey(this.key, at);
    await this.backend.client.putObject(this.backend.bucket, name, body, body.length);
    this.objects.push({ name, offset: at, size: body.length, lastModified: Date.now() });
    this.pending = [];
    this.pendingSize = 0;
  }

  async truncate(size: number): Promise<void> {
    this.live();
    if (size !== 0) throw errInvalidArgument('Truncate: unsupported size');
    await this.backend.removeKeys(this.objects.map((o) => o.name));
    this.objects = [];
    this.pending = [];
    this.pendingSize = 0;
    this.hash = canonicalDigester();
    this.offset = 0;
    this.meta.updatedAt = preciseNow();
  }

  async commit(size: number, expected: string): Promise<{ digest: string; size: number }> {
    this.live();
    if (size > 0 && size !== this.offset) throw errFailedPrecondition(`unexpected commit size ${this.offset}, expected ${size}`);
    const dgst = this.digest();
    if (expected && expected !== dgst) throw errFailedPrecondition(`unexpected commit digest ${dgst}, expected ${expected}`);
    const b = this.backend;
    const target = b.blobKey(dgst);
    if (await b.exists(target)) {
      this.closed = true;
      await b.removeIngest(this.key);
      throw errAlreadyExists(`content ${dgst}`);
    }
    if (this.objects.length === 0) {
      // Never flushed: one PUT of verified bytes.
      const body = Buffer.concat(this.pending);
      await b.client.putObject(b.bucket, target, body, body.length);
    } else if (this.objects.length === 1 && this.pendingSize === 0) {
      await b.client.copyObject(b.bucket, target, `/${b.bucket}/${this.objects[0]!.name}`);
    } else {
      await this.assemble(target, dgst);
    }
    this.closed = true;
    await b.removeIngest(this.key);
    return { digest: dgst, size: this.offset };
  }

  /** Multipart upload of data objects + buffer to `target`, completed only if the bytes read back hash to `dgst`. */
  private async assemble(target: string, dgst: string): Promise<void> {
    const b = this.backend;
    const uploadId = await b.client.initiateNewMultipartUpload(b.bucket, target, {});
    try {
      const parts: { part: number; etag: string }[] = [];
      const rehash = canonicalDigester();
      let buf: Buffer[] = [];
      let bufSize = 0;
      let total = 0;
      const put = async () => {
        const body = Buffer.concat(buf);
        buf = [];
        bufSize = 0;
        const part = parts.length + 1;
        const r = await b.client.uploadPart({ bucketName: b.bucket, objectName: target, uploadID: uploadId, partNumber: part, headers: {} }, body);
        parts.push({ part, etag: r.etag });
      };
      const add = async (piece: Buffer) => {
        rehash.update(piece);
        total += piece.length;
        buf.push(piece);
        bufSize += piece.length;
        if (bufSize >= b.partSize) await put();
      };
      for (const o of this.objects) {
        for await (const piece of (await b.client.getObject(b.bucket, o.name)) as AsyncIterable<Buffer>) await add(piece);
      }
      for (const piece of this.pending) await add(piece);
      if (bufSize > 0 || parts.length === 0) await put();
      const again = digestOf(rehash);
      if (again !== dgst || total !== this.offset) {
        throw errFailedPrecondition(`ingest data changed in the store: read back ${total} bytes with digest ${again}, wrote ${this.offset} with ${dgst}`);
      }
      await b.client.completeMultipartUpload(b.bucket, target, uploadId, parts);
    } catch (err) {
      await b.client.abortMultipartUpload(b.bucket, target, uploadId).catch(() => {});
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.flush();
    await this.backend.putMeta(this.key, this.meta);
  }
}

export class S3Backend implements Backend {
  readonly kind = 's3';
  readonly client: Client;
  readonly bucket: string;
  readonly partSize: number;
  private readonly prefix: string;
  private readonly region: string;

  constructor(opts: S3BackendOptions) {
    const url = new URL(opts.endpoint);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw errInvalidArgument(`S3 endpoint ${opts.endpoint}: want http(s)://host[:port]`);
    const useSSL = url.protocol === 'https:';
    this.region = opts.region || 'us-east-1';
    this.client = new Client({
      endPoint: url.hostname,
      port: url.port ? Number(url.port) : useSSL ? 443 : 80,
      useSSL,
      accessKey: opts.accessKey,
      secretKey: opts.secretKey,
      region: this.region,
      // Bucket in the path: works with MinIO, s3rver and any host name.
      pathStyle: true,
    });
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ?? '';
    this.partSize = Math.max(MIN_PART, opts.partSize ?? 8 * 1024 * 1024);
  }

  async init(): Promise<void> {
    if (!(await this.client.bucketExists(this.bucket))) {
      await this.client.makeBucket(this.bucket, this.region).catch(async (err) => {
        // Another content service made it meanwhile.
        if (!(await this.client.bucketExists(this.bucket))) throw err;
      });
    }
  }

  blobKey(dgst: string): string {
    const why = digestError(dgst);
    if (why) throw errInvalidArgument(`cannot calculate blob path from invalid digest: ${why}`);
    const [alg, hex] = dgst.split(':') as [string, string];
    return `${this.prefix}blobs/${alg}/${hex}`;
  }

  private ingestPrefix(key: string): string {
    if (!/^[A-Za-z0-9_-]+$/.test(key)) throw errInvalidArgument(`invalid ingest key ${JSON.stringify(key)}`);
    return `${this.prefix}ingest/${key}/`;
  }

  /** @internal */
  dataKey(key: string, offset: number): string {
    return `${this.ingestPrefix(key)}data/${String(offset).padStart(16, '0')}`;
  }

  private metaKey(key: string): string {
    return `${this.ingestPrefix(key)}meta.json`;
  }

  /** @internal */
  async exists(name: string): Promise<boolean> {
    try {
      await this.client.statObject(this.bucket, name);
      return true;
    } catch (err) {
      if (isMissing(err)) return false;
      throw err;
    }
  }

  async stat(dgst: string): Promise<BlobStat> {
    try {
      return { size: (await this.client.statObject(this.bucket, this.blobKey(dgst))).size };
    } catch (err) {
      if (isMissing(err)) throw errNotFound(`content digest ${dgst}`);
      throw err;
    }
  }

  async *read(dgst: string, offset: number, length: number, chunk: number): AsyncGenerator<{ offset: number; data: Uint8Array }> {
    const { size } = await this.stat(dgst);
    const end = length > 0 ? Math.min(size, offset + length) : size;
    if (end <= offset) return;
    // One ranged GET; its pieces are re-cut to at most `chunk` bytes.
    const stream = await this.client.getPartialObject(this.bucket, this.blobKey(dgst), offset, end - offset);
    let pos = offset;
    let held: Buffer[] = [];
    let heldSize = 0;
    for await (const piece of stream as AsyncIterable<Buffer>) {
      held.push(piece);
      heldSize += piece.length;
      if (heldSize < chunk) continue;
      let all = Buffer.concat(held);
      while (all.length >= chunk) {
        yield { offset: pos, data: all.subarray(0, chunk) };
        pos += chunk;
        all = all.subarray(chunk);
      }
      held = all.length ? [all] : [];
      heldSize = all.length;
    }
    if (heldSize > 0) yield { offset: pos, data: Buffer.concat(held) };
    if (pos + heldSize !== end) throw errFailedPrecondition(`short read of ${dgst}: got ${pos + heldSize - offset} of ${end - offset} bytes`);
  }

  async delete(dgst: string): Promise<void> {
    await this.client.removeObject(this.bucket, this.blobKey(dgst));
  }

  /** @internal */
  async removeKeys(names: string[]): Promise<void> {
    for (let i = 0; i < names.length; i += 1000) await this.client.removeObjects(this.bucket, names.slice(i, i + 1000));
  }

  private async list(prefix: string): Promise<{ name: string; size: number; lastModified: number }[]> {
    const out: { name: string; size: number; lastModified: number }[] = [];
    for await (const o of this.client.listObjectsV2(this.bucket, prefix, true) as AsyncIterable<{ name?: string; size: number; lastModified?: Date }>) {
      if (o.name) out.push({ name: o.name, size: o.size, lastModified: o.lastModified?.getTime() ?? 0 });
    }
    return out;
  }

  /** The ingest's data objects that continue one another from offset 0, and the rest. */
  private async dataObjects(key: string): Promise<{ run: DataObject[]; stray: string[] }> {
    const dir = `${this.ingestPrefix(key)}data/`;
    const all = (await this.list(dir))
      .map((o) => ({ ...o, offset: Number(o.name.slice(dir.length)) }))
      .sort((a, b) => a.offset - b.offset);
    const run: DataObject[] = [];
    const stray: string[] = [];
    let next = 0;
    for (const o of all) {
      if (o.offset === next && o.size > 0 && stray.length === 0) {
        run.push(o);
        next += o.size;
      } else {
        stray.push(o.name);
      }
    }
    return { run, stray };
  }

  private async getMeta(key: string): Promise<IngestMeta | undefined> {
    try {
      return JSON.parse((await readAll(await this.client.getObject(this.bucket, this.metaKey(key)))).toString('utf8')) as IngestMeta;
    } catch (err) {
      if (isMissing(err) || err instanceof SyntaxError) return undefined;
      throw err;
    }
  }

  /** @internal */
  async putMeta(key: string, meta: IngestMeta): Promise<void> {
    const body = Buffer.from(JSON.stringify(meta));
    await this.client.putObject(this.bucket, this.metaKey(key), body, body.length, { 'Content-Type': 'application/json' });
  }

  /** @internal Removes every object of the ingest, the meta last (an ingest without meta does not exist). */
  async removeIngest(key: string): Promise<void> {
    const meta = this.metaKey(key);
    const names = (await this.list(this.ingestPrefix(key))).map((o) => o.name).filter((n) => n !== meta);
    await this.removeKeys(names);
    await this.client.removeObject(this.bucket, meta);
  }

  async writer(key: string, ref: string, total: number): Promise<IngestWriter> {
    let meta = await this.getMeta(key);
    // As containerd's local store: an ingest for another ref or another total is not
    // resumable; start over.
    const resumable = meta !== undefined && meta.ref === ref && !(total > 0 && meta.total > 0 && total !== meta.total);
    const { run, stray } = await this.dataObjects(key);
    const hash = canonicalDigester();
    let offset = 0;
    const kept: DataObject[] = [];
    if (resumable) {
      // Rebuild the hash from the stored bytes; trust neither listed sizes nor ETags.
      let last = 0;
      for (const o of run) {
        let got = 0;
        for await (const piece of (await this.client.getObject(this.bucket, o.name)) as AsyncIterable<Buffer>) {
          hash.update(piece);
          got += piece.length;
        }
        if (got !== o.size) throw errFailedPrecondition(`ingest object ${o.name}: read ${got} bytes, listed ${o.size}`);
        offset += got;
        last = Math.max(last, o.lastModified);
        kept.push(o);
      }
      meta = { ...meta!, total: meta!.total || total, updatedAt: Math.max(meta!.updatedAt, last) };
      await this.removeKeys(stray);
    } else {
      await this.removeKeys([...run.map((o) => o.name), ...stray]);
      const now = preciseNow();
      meta = { ref, total, startedAt: now, updatedAt: now };
    }
    await this.putMeta(key, meta);
    return new S3IngestWriter(this, key, meta, kept, offset, hash);
  }

  async ingestStatus(key: string): Promise<IngestStatus> {
    const meta = await this.getMeta(key);
    if (!meta) throw errNotFound(`ingest ${key}`);
    const { run } = await this.dataObjects(key);
    let offset = 0;
    let last = meta.updatedAt;
    for (const o of run) {
      offset += o.size;
      last = Math.max(last, o.lastModified);
    }
    // After a crash the data objects are newer than the last saved meta.
    return { ref: meta.ref, offset, total: meta.total, startedAt: meta.startedAt, updatedAt: last };
  }

  async abort(key: string): Promise<void> {
    if (!(await this.exists(this.metaKey(key)))) throw errNotFound(`ingest ref ${JSON.stringify(key)}`);
    await this.removeIngest(key);
  }
}
