// Reading rows in PostgreSQL's binary format. Postgres.js asks for every query result in
// text format, where a bytea arrives as hex (twice its size) that is then decoded in JS;
// `COPY (...) TO STDOUT (FORMAT binary)` sends the same rows with each field's binary
// representation (bytea as is, text as UTF-8, int8 big-endian), which for rows that are
// mostly bytea (container specs) is half the bytes and no decoding.
import type { Readable } from 'node:stream';
import type { Sql } from './db.js';

/**
 * `s` as a PostgreSQL string literal, for statements that take no parameters (COPY's
 * query cannot have any). The E'' form reads the same whatever standard_conforming_strings is.
 */
export function literal(s: string): string {
  if (s.includes('\0')) throw new Error('a PostgreSQL string cannot contain NUL');
  return `E'${s.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** One row: each field's binary representation (a view into the result), null for NULL. */
export type BinaryRow = (Buffer | null)[];

const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

/**
 * The rows of `select` (a query without parameters; quote values with `literal`), each
 * field in its binary representation. The whole result is read before this returns, so the
 * connection goes back to the pool at once whatever the caller does next; page large sets.
 * `settings` (planner settings, constant names and values only) apply to this query alone:
 * `SET LOCAL` in the same simple query, one implicit transaction. `sql` is a pool (not a
 * transaction): the copy reserves one of its connections.
 */
export async function selectBinary(sql: Sql, select: string, settings: Readonly<Record<string, string>> = {}): Promise<BinaryRow[]> {
  let set = '';
  for (const [k, v] of Object.entries(settings)) {
    if (!/^[a-z_]+$/.test(k) || !/^[a-z0-9_]+$/.test(v)) throw new Error(`setting ${k}=${v}: not a plain name and value`);
    set += `SET LOCAL ${k} = ${v}; `;
  }
  // The copy runs on a connection of its own. Postgres.js pipelines queries onto busy
  // connections, and one that reaches a connection between its CopyOutResponse and CopyDone
  // is refused (COPY_IN_PROGRESS): without this, any query made while a list streams could
  // fail. A reserved connection takes no query but ours until released.
  const conn = await sql.reserve();
  try {
    return await copyOut(conn, `${set}COPY (${select}) TO STDOUT (FORMAT binary)`);
  } finally {
    conn.release();
  }
}

async function copyOut(conn: Sql, copy: string): Promise<BinaryRow[]> {
  const stream = (await conn.unsafe(copy).readable()) as unknown as Readable;
  const parser = new CopyParser();
  try {
    // 'data' events hand over each CopyData message as Postgres.js pushes it. Async iteration
    // reads the stream's buffer instead, joining whatever messages queued there: a copy of
    // most of the result in fresh buffers (for a 10k-container list, ~27 MB of external
    // memory that makes V8 collect more often).
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (chunk: Buffer) => {
        try {
          parser.push(chunk);
        } catch (err) {
          reject(err);
        }
      });
      stream.once('end', resolve);
      stream.once('error', reject);
    });
  } finally {
    // Postgres.js 3.4 pauses its socket when a chunk fills the stream's buffer and resumes
    // it only from the stream's read(). When the end of the copy came in the same socket
    // read as that chunk, read() is never called again and the connection's next query
    // would wait forever for a reply left unread (porsager/postgres#499, fix proposed in
    // #1016). read() resumes the socket; on a flowing socket that is a no-op.
    // libs/db/test/copy.test.ts fails without this.
    (stream as unknown as { _read(n: number): void })._read(0);
  }
  return parser.end();
}

/** Rows of a binary COPY stream (header, tuples, trailer), as PostgreSQL documents the format, whole or in chunks. */
export function parseCopy(stream: Buffer | readonly Buffer[]): BinaryRow[] {
  const p = new CopyParser();
  for (const chunk of Buffer.isBuffer(stream) ? [stream] : stream) p.push(chunk);
  return p.end();
}

/**
 * Parses a binary COPY stream chunk by chunk. PostgreSQL sends one row per CopyData
 * message, so rows are read where they lie (fields are views into the chunks); only a row
 * cut across chunks, which the protocol allows, is first joined with what follows.
 */
class CopyParser {
  private readonly rows: BinaryRow[] = [];
  private rest: Buffer | undefined;
  private header = false;
  private done = false;

  push(chunk: Buffer): void {
    let b = this.rest ? Buffer.concat([this.rest, chunk]) : chunk;
    this.rest = undefined;
    let p = 0;
    if (!this.header) {
      if (b.length < 19) return void (this.rest = b);
      if (!b.subarray(0, 11).equals(SIGNATURE)) throw new Error('not a binary COPY stream');
      const start = 19 + b.readUInt32BE(15); // signature, flags, header extension length, extension
      if (b.length < start) return void (this.rest = b);
      p = start;
      this.header = true;
    }
    while (!this.done && p < b.length) {
      const next = this.row(b, p);
      if (next < 0) {
        this.rest = b.subarray(p);
        return;
      }
      p = next;
    }
    if (p < b.length) throw new Error('binary COPY stream: data after the trailer');
  }

  /** Reads the row (or trailer) at `p`; returns where the next starts, or -1 if it is not all here. */
  private row(b: Buffer, p: number): number {
    if (p + 2 > b.length) return -1;
    const n = b.readInt16BE(p);
    p += 2;
    if (n === -1) {
      this.done = true;
      return p;
    }
    const row: BinaryRow = new Array(n);
    for (let i = 0; i < n; i++) {
      if (p + 4 > b.length) return -1;
      const len = b.readInt32BE(p);
      p += 4;
      if (len < 0) row[i] = null;
      else {
        if (p + len > b.length) return -1;
        row[i] = b.subarray(p, p + len);
        p += len;
      }
    }
    this.rows.push(row);
    return p;
  }

  end(): BinaryRow[] {
    if (!this.header) throw new Error('not a binary COPY stream');
    if (!this.done || this.rest) throw new Error('binary COPY stream ends inside a row');
    return this.rows;
  }
}

/** A timestamptz field (microseconds since 2000-01-01 UTC) as Unix milliseconds, truncated as Postgres.js's Date is. */
export function timestamptzMs(b: Buffer): number {
  const micros = b.readInt32BE(0) * 4294967296 + b.readUInt32BE(4);
  return Math.floor(micros / 1000) + 946_684_800_000;
}
