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
 */
export async function selectBinary(sql: Sql, select: string): Promise<BinaryRow[]> {
  const stream = (await sql.unsafe(`COPY (${select}) TO STDOUT (FORMAT binary)`).readable()) as unknown as Readable;
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of stream) chunks.push(chunk as Buffer);
  } finally {
    // Postgres.js 3.4 pauses its socket when a chunk fills the stream's buffer and resumes
    // it only from the stream's read(). When the end of the copy came in the same socket
    // read as that chunk, read() is never called again and the connection's next query
    // would wait forever for a reply left unread (porsager/postgres#499, fix proposed in
    // #1016). read() resumes the socket; on a flowing socket that is a no-op.
    // libs/db/test/copy.test.ts fails without this.
    (stream as unknown as { _read(n: number): void })._read(0);
  }
  return parseCopy(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
}

/** Rows of a binary COPY stream (header, tuples, trailer), as PostgreSQL documents the format. */
export function parseCopy(b: Buffer): BinaryRow[] {
  if (b.length < 19 || !b.subarray(0, 11).equals(SIGNATURE)) throw new Error('not a binary COPY stream');
  let p = 15 + 4 + b.readUInt32BE(15); // signature, flags, header extension
  const rows: BinaryRow[] = [];
  for (;;) {
    const n = b.readInt16BE(p);
    p += 2;
    if (n === -1) break;
    const row: BinaryRow = new Array(n);
    for (let i = 0; i < n; i++) {
      const len = b.readInt32BE(p);
      p += 4;
      if (len < 0) row[i] = null;
      else {
        row[i] = b.subarray(p, p + len);
        p += len;
      }
    }
    rows.push(row);
  }
  return rows;
}

/** A timestamptz field (microseconds since 2000-01-01 UTC) as Unix milliseconds, truncated as Postgres.js's Date is. */
export function timestamptzMs(b: Buffer): number {
  const micros = b.readInt32BE(0) * 4294967296 + b.readUInt32BE(4);
  return Math.floor(micros / 1000) + 946_684_800_000;
}
