// The blob backend: small role interfaces after containerd's content.Provider /
// Ingester, without namespaces, labels or leases (those live in PostgreSQL, in
// ContentStore). A backend stores each blob once under its digest and keeps in-progress
// ingests, keyed by an opaque key, across restarts. The local disk backend implements
// it today; an S3 backend implements the same interfaces.

export interface BlobStat {
  size: number;
}

/** Reading committed blobs. */
export interface Provider {
  /** NotFound when the backend has no blob with this digest. */
  stat(digest: string): Promise<BlobStat>;
  /**
   * The bytes [offset, offset+length) of a blob (length 0: to the end), in pieces of at
   * most `chunk` bytes. The caller has checked the range against the blob's size.
   */
  read(digest: string, offset: number, length: number, chunk: number): AsyncIterable<{ offset: number; data: Uint8Array }>;
}

/** Removing committed blobs (the caller has made sure nothing references them). */
export interface Deleter {
  delete(digest: string): Promise<void>;
}

/**
 * The digest of an ingest's first `offset` bytes, computed by whoever saw them before the
 * store (the gateway hashes a client's stream to answer its writes at once): the content
 * service then hashes each byte once, not twice. Trusted as the service trusts the bus.
 */
export interface Vouched {
  digest: string;
  offset: number;
}

export interface IngestStatus {
  ref: string;
  offset: number;
  total: number;
  /** Epoch milliseconds (with fraction). */
  startedAt: number;
  updatedAt: number;
}

/**
 * One open ingest. Writes append at `offset`; the caller serialises calls and holds the
 * ref's lock. `close` keeps the ingest for a later writer; `commit` ends it.
 */
export interface IngestWriter {
  readonly offset: number;
  status(): IngestStatus;
  /** The digest of the bytes written so far (after settle(), when a write was vouched for). */
  digest(): string;
  /**
   * `at`: the write's time for updatedAt (ms since the epoch), when not now. `vouched`:
   * the digest the ingest will have once `data` is written, as the caller hashed it; a
   * backend may take it instead of hashing `data` (digest() answers it while the ingest
   * stays at that offset) and hashes from its stored bytes only when it must. A vouched
   * write may still be running when this resolves (the disk backend overlaps it with the
   * next); its failure is thrown by a later call, and settle() waits for it.
   */
  write(data: Uint8Array, at?: number, vouched?: Vouched): Promise<void>;
  /** Takes `vouched` as the digest while the ingest is at its offset. Optional. */
  vouch?(vouched: Vouched): void;
  /** Waits for every write, then hashes whatever was written unhashed and is not vouched for at the current offset. Optional. */
  settle?(): Promise<void>;
  /** Only 0 is supported, as in containerd's local store. */
  truncate(size: number): Promise<void>;
  /**
   * Verifies size (when > 0) and digest (when set) — FailedPrecondition, ingest kept —
   * then publishes the blob atomically and durably and removes the ingest. AlreadyExists
   * (ingest removed) when the backend already holds the digest.
   */
  commit(size: number, expected: string): Promise<{ digest: string; size: number }>;
  close(): Promise<void>;
}

/** Starting, resuming, inspecting and discarding ingests. */
export interface Ingester {
  /** Opens the ingest under `key`, resuming its bytes when one exists for the same ref. */
  writer(key: string, ref: string, total: number): Promise<IngestWriter>;
  /** NotFound when there is no ingest under `key`. */
  ingestStatus(key: string): Promise<IngestStatus>;
  /** NotFound when there is no ingest under `key`. */
  abort(key: string): Promise<void>;
}

export interface Backend extends Provider, Ingester, Deleter {
  /** A name for discovery metadata (`local`, `s3`). */
  readonly kind: string;
  init(): Promise<void>;
}
