// The socket under each Postgres.js connection. Postgres.js reads with plain 'data' events:
// node allocates fresh memory for every read, and whenever a message straddles two reads
// (nearly every read of a large result) Postgres.js joins the rest with the next read in yet
// another fresh buffer. A 10k-container list (~30 MB) so allocated ~60 MB outside V8's heap
// and set off several collections for "external memory pressure" per list.
//
// Here each connection reads into one buffer of its own (node's `onread`) and hands
// Postgres.js whole messages only, copied once into memory of their own: one allocation and
// one copy per read, and Postgres.js never joins. What Postgres.js receives is exactly what
// it would have (fresh buffers, the same bytes), only cut at message boundaries.
import net from 'node:net';

/** Bytes one read may bring; a message longer than this is gathered in a buffer grown for it. */
export const READ_BUFFER = 256 * 1024;

/**
 * Cuts a PostgreSQL backend byte stream into runs of whole messages (type byte, int32 length
 * counting itself, body). `push` takes what a read brought and returns the whole messages it
 * completes as one fresh buffer (or undefined); the rest stays for the next read.
 */
export class MessageCutter {
  private buf: Buffer;
  private len = 0;

  constructor(private readonly size = READ_BUFFER) {
    this.buf = Buffer.allocUnsafeSlow(size);
  }

  /** Where the next read may write: the free end of the buffer (never empty). */
  space(): Buffer {
    if (this.len === this.buf.length) this.grow(this.buf.length * 2);
    return this.buf.subarray(this.len);
  }

  /** `n` bytes were read into `space()`. */
  push(n: number): Buffer | undefined {
    this.len += n;
    const whole = this.wholeEnd();
    // A message longer than the buffer: space() doubles it as the bytes come (not at once
    // to the length the header claims, which a broken stream could make 4 GiB).
    if (whole === 0) return undefined;
    const out = Buffer.allocUnsafeSlow(whole);
    this.buf.copy(out, 0, 0, whole);
    this.buf.copyWithin(0, whole, this.len);
    this.len -= whole;
    // A buffer grown for one long message goes back to the usual size once it is out.
    if (this.buf.length > this.size && this.len <= this.size && this.needed() <= this.size) {
      const small = Buffer.allocUnsafeSlow(this.size);
      this.buf.copy(small, 0, 0, this.len);
      this.buf = small;
    }
    return out;
  }

  /** Bytes held that do not yet make a whole message. */
  get pending(): number {
    return this.len;
  }

  /** The end of the last whole message in the buffer. */
  private wholeEnd(): number {
    let p = 0;
    while (p + 5 <= this.len) {
      const end = p + 1 + this.buf.readUInt32BE(p + 1);
      if (end > this.len) break;
      p = end;
    }
    return p;
  }

  /** How many bytes the first message needs in all (5 while its header is incomplete). */
  private needed(): number {
    return this.len < 5 ? 5 : 1 + this.buf.readUInt32BE(1);
  }

  private grow(size: number): void {
    const b = Buffer.allocUnsafeSlow(size);
    this.buf.copy(b, 0, 0, this.len);
    this.buf = b;
  }
}

/**
 * A socket to `target`, connecting, whose 'data' events carry whole PostgreSQL messages: for
 * Postgres.js's `socket` option. Returned at once, as Postgres.js's own socket is: writes
 * wait for the connection, and a refused or lost one ends in 'error' and 'close', which
 * Postgres.js handles as for its own (retries, reconnects, connect_timeout). Not for TLS: a
 * TLS socket would read from it, and the server's one-byte answer to SSLRequest is no message.
 */
export function pgSocket(target: { path: string } | { host: string; port: number }): net.Socket {
  const cutter = new MessageCutter();
  const socket: net.Socket = net.connect({
    ...target,
    onread: {
      buffer: () => cutter.space(),
      callback: (n: number) => {
        const messages = cutter.push(n);
        if (messages) socket.emit('data', messages);
        return true;
      },
    },
  } as net.NetConnectOpts);
  return socket;
}
