// HPACK against the RFC's own examples, against what a real HTTP/2 client (node's nghttp2)
// sends, and against malformed blocks, which must fail with HpackError rather than decode wrongly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { HpackDecoder, HpackError, encodeHeaders } from '@flotilla/grpc';
import { huffmanDecode } from '../src/hpack.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test('RFC 7541 C.3: requests without Huffman, sharing the dynamic table', () => {
  const d = new HpackDecoder();
  assert.deepEqual(d.decode(hex('8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d')), [
    [':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com'],
  ]);
  assert.deepEqual(d.decode(hex('8286 84be 5808 6e6f 2d63 6163 6865')), [
    [':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com'], ['cache-control', 'no-cache'],
  ]);
  assert.deepEqual(d.decode(hex('8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65')), [
    [':method', 'GET'], [':scheme', 'https'], [':path', '/index.html'], [':authority', 'www.example.com'], ['custom-key', 'custom-value'],
  ]);
  assert.equal(d.tableLength, 3);
});

test('RFC 7541 C.4: the same requests Huffman-coded', () => {
  const d = new HpackDecoder();
  assert.deepEqual(d.decode(hex('8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff')), [
    [':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com'],
  ]);
  assert.deepEqual(d.decode(hex('8286 84be 5886 a8eb 1064 9cbf')).at(-1), ['cache-control', 'no-cache']);
  assert.deepEqual(d.decode(hex('8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf')).at(-1), ['custom-key', 'custom-value']);
});

test('RFC 7541 C.6: Huffman responses with eviction in a 256-byte table', () => {
  const d = new HpackDecoder(256);
  // The peer shrinks the table to 256 first (the RFC's example assumes it is already that size).
  d.decode(hex('3fe1 01'));
  assert.deepEqual(d.decode(hex(`4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
    2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3`)), [
    [':status', '302'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['location', 'https://www.example.com'],
  ]);
  assert.deepEqual(d.decode(hex('4883 640e ffc1 c0bf')), [
    [':status', '307'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['location', 'https://www.example.com'],
  ]);
  assert.deepEqual(d.decode(hex(`88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
    77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07`)), [
    [':status', '200'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'], ['location', 'https://www.example.com'],
    ['content-encoding', 'gzip'], ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'],
  ]);
  assert.equal(d.tableLength, 3, 'the RFC ends with three entries after evictions');
});

test('every byte value survives Huffman decoding of what nghttp2 sends', async () => {
  // A raw TCP server reads what node's HTTP/2 client (nghttp2: Huffman, dynamic table) sends.
  const blocks: Buffer[] = [];
  let got!: () => void;
  const done = new Promise<void>((r) => (got = r));
  const raw = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    let prefaceSeen = false;
    sock.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      if (!prefaceSeen) {
        if (buf.length < 24) return;
        buf = buf.subarray(24);
        prefaceSeen = true;
        sock.write(Buffer.from('000000040000000000', 'hex')); // empty SETTINGS
      }
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.length < 9 + len) break;
        if (buf[3] === 1) blocks.push(Buffer.from(buf.subarray(9, 9 + len))); // HEADERS, END_HEADERS (small blocks)
        buf = buf.subarray(9 + len);
        if (blocks.length === 3) got();
      }
    });
  });
  await new Promise<void>((r) => raw.listen(0, '127.0.0.1', r));
  const port = (raw.address() as net.AddressInfo).port;
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
  const all = Buffer.alloc(256);
  for (let i = 0; i < 256; i++) all[i] = i;
  const binValue = all.toString('base64');
  const latin = 'value with spaces, ~!@#$%^&*()_+{}|:"<>?`-=[]\\;\',./';
  const reqs = [0, 1, 2].map((i) =>
    session.request({ ':method': 'POST', ':path': `/pkg.Svc/Method${i}`, 'content-type': 'application/grpc', 'x-bin': binValue, 'x-text': latin, 'x-i': String(i) }),
  );
  for (const r of reqs) r.on('error', () => {});
  await done;
  session.destroy();
  raw.close();
  const d = new HpackDecoder();
  blocks.forEach((block, i) => {
    const h = new Map(d.decode(block));
    assert.equal(h.get(':path'), `/pkg.Svc/Method${i}`);
    assert.equal(h.get('x-bin'), binValue);
    assert.equal(h.get('x-text'), latin);
    assert.equal(h.get('x-i'), String(i));
  });
  assert.ok(blocks[1]!.length < blocks[0]!.length, 'later blocks reuse the dynamic table');
});

test('encodeHeaders: indexed where the static table has the pair, literal otherwise; decodes back', () => {
  assert.deepEqual(encodeHeaders([[':status', '200']]), Buffer.from([0x88]));
  const h: [string, string][] = [
    [':status', '200'], ['content-type', 'application/grpc'], ['grpc-status', '13'],
    ['grpc-message', 'x'.repeat(300)], ['x-latin1', '\u00e9\u00ff'],
  ];
  const d = new HpackDecoder();
  assert.deepEqual(d.decode(encodeHeaders(h)), h);
  assert.equal(d.tableLength, 0, 'nothing is added to the peer table');
});

test('huffmanDecode: padding and EOS rules', () => {
  assert.equal(huffmanDecode(hex('f1e3 c2e5 f23a 6ba0 ab90 f4ff')), 'www.example.com');
  assert.throws(() => huffmanDecode(hex('ff')), HpackError, 'eight bits of padding');
  assert.throws(() => huffmanDecode(hex('ffff ffff')), HpackError, 'EOS');
  assert.throws(() => huffmanDecode(hex('f0')), HpackError, 'padding that is not all ones');
  assert.equal(huffmanDecode(Buffer.alloc(0)), '');
});

test('malformed blocks are HpackErrors', () => {
  const bad = [
    '80', // index 0
    'be', // dynamic index 62 in an empty table
    '41', // truncated: literal with no value
    '4003 6162', // name longer than the block
    '82 20', // size update after a field
    '3fe2 1f', // size update beyond 4096
    'ff ffff ffff ff', // integer overflow
    '0f', // truncated integer prefix
  ];
  for (const b of bad) assert.throws(() => new HpackDecoder().decode(hex(b)), HpackError, b);
});

test('a header list past the limit is flagged, and the table still follows the block', () => {
  const d = new HpackDecoder(4096, 100);
  // Two incrementally indexed fields of 32+4+40 bytes each: the second passes the limit.
  const field = (n: string) => Buffer.concat([Buffer.from([0x40, 4]), Buffer.from(n), Buffer.from([40]), Buffer.alloc(40, 0x61)]);
  const list = d.decode(Buffer.concat([field('aaaa'), field('bbbb')]));
  assert.equal(d.overLimit, true);
  assert.equal(list.length, 1);
  assert.equal(d.tableLength, 2, 'both entries are in the table');
  assert.deepEqual(d.decode(hex('be')).map(([n]) => n), ['bbbb'], 'newest entry first');
  assert.deepEqual(d.decode(hex('bf')).map(([n]) => n), ['aaaa']);
  assert.equal(d.overLimit, false);
});
