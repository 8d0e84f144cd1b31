// HPACK (RFC 7541) for the gRPC server: a full decoder for what clients send, and an encoder that
// needs no state. Header names and values are byte strings; they are carried here as latin1
// strings, so every byte survives the round trip (gRPC metadata is ASCII or "-bin" base64).
import { HUFFMAN_CODES, HUFFMAN_LENGTHS } from './huffman-table.js';

/** A malformed header block. The connection cannot go on: its decoding table is lost. */
export class HpackError extends Error {}

export type HeaderList = [string, string][];

const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'], [':path', '/index.html'],
  [':scheme', 'http'], [':scheme', 'https'], [':status', '200'], [':status', '204'], [':status', '206'],
  [':status', '304'], [':status', '400'], [':status', '404'], [':status', '500'], ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'], ['accept-language', ''], ['accept-ranges', ''], ['accept', ''],
  ['access-control-allow-origin', ''], ['age', ''], ['allow', ''], ['authorization', ''], ['cache-control', ''],
  ['content-disposition', ''], ['content-encoding', ''], ['content-language', ''], ['content-length', ''],
  ['content-location', ''], ['content-range', ''], ['content-type', ''], ['cookie', ''], ['date', ''],
  ['etag', ''], ['expect', ''], ['expires', ''], ['from', ''], ['host', ''], ['if-match', ''],
  ['if-modified-since', ''], ['if-none-match', ''], ['if-range', ''], ['if-unmodified-since', ''],
  ['last-modified', ''], ['link', ''], ['location', ''], ['max-forwards', ''], ['proxy-authenticate', ''],
  ['proxy-authorization', ''], ['range', ''], ['referer', ''], ['refresh', ''], ['retry-after', ''],
  ['server', ''], ['set-cookie', ''], ['strict-transport-security', ''], ['transfer-encoding', ''],
  ['user-agent', ''], ['vary', ''], ['via', ''], ['www-authenticate', ''],
];

/** The per-entry overhead RFC 7541 §4.1 counts in table and header list sizes. */
const ENTRY_OVERHEAD = 32;

// ---- Huffman decoding ----

// A tree walked a byte at a time: an internal node has 256 children, one per next input byte; a
// leaf says which symbol ends within that byte and how many of its bits the symbol used.
interface HuffNode {
  children: (HuffNode | undefined)[] | null;
  sym: number;
  /** Bits of the last byte this symbol used (1..8); only meaningful for a leaf. */
  bits: number;
}

function buildHuffmanTree(): HuffNode {
  const root: HuffNode = { children: new Array(256), sym: 0, bits: 0 };
  for (let sym = 0; sym < 256; sym++) {
    const code = HUFFMAN_CODES[sym]!;
    let len = HUFFMAN_LENGTHS[sym]!;
    let node = root;
    while (len > 8) {
      len -= 8;
      const i = (code >>> len) & 0xff;
      node = node.children![i] ??= { children: new Array(256), sym: 0, bits: 0 };
    }
    const shift = 8 - len;
    const start = (code << shift) & 0xff;
    const leaf: HuffNode = { children: null, sym, bits: len };
    for (let j = 0; j < 1 << shift; j++) node.children![start | j] = leaf;
  }
  return root;
}

const HUFFMAN_ROOT = buildHuffmanTree();

/** Decodes a Huffman-coded string (RFC 7541 §5.2): padding must be at most 7 one-bits, EOS never. */
export function huffmanDecode(src: Uint8Array): string {
  // Every symbol is at least 5 bits, so the output is at most 8/5 of the input.
  const out = Buffer.allocUnsafe(Math.ceil((src.length * 8) / 5));
  let n = 0;
  let node = HUFFMAN_ROOT;
  let cur = 0; // unconsumed input bits, right-aligned; fewer than 16 of them matter
  let cbits = 0; // how many bits of cur are unconsumed
  let sbits = 0; // bits read into the symbol being decoded
  for (let i = 0; i < src.length; i++) {
    cur = ((cur << 8) | src[i]!) & 0xffff;
    cbits += 8;
    sbits += 8;
    while (cbits >= 8) {
      const next: HuffNode | undefined = node.children![(cur >>> (cbits - 8)) & 0xff];
      if (!next) throw new HpackError('invalid Huffman code (EOS in a string)');
      if (next.children === null) {
        out[n++] = next.sym;
        cbits -= next.bits;
        node = HUFFMAN_ROOT;
        sbits = cbits;
      } else {
        cbits -= 8;
        node = next;
      }
    }
  }
  // Symbols that end in the last, partial byte: look them up as if padded with zero bits.
  while (cbits > 0) {
    const next = node.children![(cur << (8 - cbits)) & 0xff];
    if (!next || next.children !== null || next.bits > cbits) break;
    out[n++] = next.sym;
    cbits -= next.bits;
    node = HUFFMAN_ROOT;
    sbits = cbits;
  }
  if (sbits > 7) throw new HpackError('invalid Huffman padding (longer than 7 bits)');
  const mask = (1 << cbits) - 1;
  if ((cur & mask) !== mask) throw new HpackError('invalid Huffman padding (not the EOS prefix)');
  return out.toString('latin1', 0, n);
}

// ---- decoding ----

/**
 * The decoding side of one connection. Its dynamic table follows every block the peer sends, so
 * every block must be decoded in order, even one whose stream is refused.
 */
export class HpackDecoder {
  /** Newest entry last. */
  private readonly entries: [string, string][] = [];
  private size = 0;
  private limit: number;
  /** Set by decode() when the block's header list was larger than maxHeaderListSize. */
  overLimit = false;

  /**
   * @param maxTableSize the SETTINGS_HEADER_TABLE_SIZE we advertised: the most the peer may set.
   * @param maxHeaderListSize past this (RFC 7541 §4.1 sizes) the rest of a block is decoded for
   *   the table's sake but not returned, and overLimit is set.
   */
  constructor(
    private readonly maxTableSize = 4096,
    private readonly maxHeaderListSize = 65536,
  ) {
    this.limit = maxTableSize;
  }

  decode(block: Uint8Array): HeaderList {
    const out: HeaderList = [];
    let listSize = 0;
    this.overLimit = false;
    let o = 0;
    let sawField = false;
    const int = (prefixBits: number): number => {
      if (o >= block.length) throw new HpackError('truncated header block');
      const max = (1 << prefixBits) - 1;
      let v = block[o++]! & max;
      if (v < max) return v;
      for (let m = 0; ; m += 7) {
        if (o >= block.length) throw new HpackError('truncated integer');
        if (m > 21) throw new HpackError('integer overflow');
        const b = block[o++]!;
        v += (b & 0x7f) * 2 ** m;
        if (!(b & 0x80)) return v;
      }
    };
    const str = (): string => {
      if (o >= block.length) throw new HpackError('truncated header block');
      const huffman = (block[o]! & 0x80) !== 0;
      const len = int(7);
      if (len > block.length - o) throw new HpackError('string longer than the block');
      const bytes = block.subarray(o, o + len);
      o += len;
      return huffman ? huffmanDecode(bytes) : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('latin1');
    };
    const emit = (name: string, value: string): void => {
      sawField = true;
      listSize += name.length + value.length + ENTRY_OVERHEAD;
      if (listSize > this.maxHeaderListSize) this.overLimit = true;
      else out.push([name, value]);
    };
    while (o < block.length) {
      const b = block[o]!;
      if (b & 0x80) {
        // Indexed field.
        const [name, value] = this.lookup(int(7));
        emit(name, value);
      } else if (b & 0x40) {
        // Literal with incremental indexing.
        const index = int(6);
        const name = index === 0 ? str() : this.lookup(index)[0];
        const value = str();
        this.add(name, value);
        emit(name, value);
      } else if (b & 0x20) {
        // Dynamic table size update: only before the block's first field (RFC 7541 §4.2).
        if (sawField) throw new HpackError('table size update after a header field');
        const size = int(5);
        if (size > this.maxTableSize) throw new HpackError(`table size update to ${size} beyond ${this.maxTableSize}`);
        this.limit = size;
        this.evict(0);
      } else {
        // Literal without indexing (0000) or never indexed (0001): the same to a decoder.
        const index = int(4);
        const name = index === 0 ? str() : this.lookup(index)[0];
        emit(name, str());
      }
    }
    return out;
  }

  /** The dynamic table's entry count (for tests). */
  get tableLength(): number {
    return this.entries.length;
  }

  private lookup(index: number): readonly [string, string] {
    if (index === 0) throw new HpackError('index 0');
    if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1]!;
    const d = index - STATIC_TABLE.length;
    if (d > this.entries.length) throw new HpackError(`index ${index} beyond the table`);
    return this.entries[this.entries.length - d]!;
  }

  private add(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    // An entry larger than the table empties it and is not kept (RFC 7541 §4.4).
    this.evict(size);
    if (size <= this.limit) {
      this.entries.push([name, value]);
      this.size += size;
    }
  }

  /** Evicts the oldest entries until `room` more bytes fit. */
  private evict(room: number): void {
    let drop = 0;
    while (drop < this.entries.length && this.size + room > this.limit) {
      const [n, v] = this.entries[drop++]!;
      this.size -= n.length + v.length + ENTRY_OVERHEAD;
    }
    if (drop) this.entries.splice(0, drop);
  }
}

// ---- encoding ----

const STATIC_EXACT = new Map<string, number>();
const STATIC_NAME = new Map<string, number>();
STATIC_TABLE.forEach(([name, value], i) => {
  if (value) STATIC_EXACT.set(`${name}\0${value}`, i + 1);
  if (!STATIC_NAME.has(name)) STATIC_NAME.set(name, i + 1);
});

function pushInt(out: number[], prefixBits: number, first: number, v: number): void {
  const max = (1 << prefixBits) - 1;
  if (v < max) {
    out.push(first | v);
    return;
  }
  out.push(first | max);
  v -= max;
  while (v >= 0x80) {
    out.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

function pushString(out: number[], s: string): void {
  pushInt(out, 7, 0, s.length);
  for (let i = 0; i < s.length; i++) out.push(s.charCodeAt(i) & 0xff);
}

/**
 * Encodes a header block without touching the peer's dynamic table: exact static matches are
 * indexed, everything else is a literal without indexing, raw (not Huffman) strings. Our blocks
 * are few and small (a status, a content type, grpc-status/message), so state would buy nothing.
 * Names must be lower case.
 */
export function encodeHeaders(headers: Iterable<readonly [string, string]>): Buffer {
  const out: number[] = [];
  for (const [name, value] of headers) {
    const exact = STATIC_EXACT.get(`${name}\0${value}`);
    if (exact !== undefined) {
      pushInt(out, 7, 0x80, exact);
      continue;
    }
    const nameIndex = STATIC_NAME.get(name);
    if (nameIndex !== undefined) pushInt(out, 4, 0, nameIndex);
    else {
      out.push(0);
      pushString(out, name);
    }
    pushString(out, value);
  }
  return Buffer.from(out);
}
