// The gRPC calls of one `ctr run --rm` as the client sees them, on either side: a logging
// HTTP/2 proxy between ctr and the side's socket prints each call's start (ms after ctr was
// started) and duration, after two untimed warm-up runs. The same view for containerd and
// flotilla, so the two can be compared call by call (timeline.ts shows flotilla's inner hops).
//   node --import tsx tools/bench/callpath.ts containerd|flotilla [repeat]
import http2 from 'node:http2';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { buildBusyboxImage } from '@flotilla/testing';
import { startContainerd, startFlotilla, type Side } from './sides.js';
import { NAMESPACE, timedCtr } from './workloads.js';

async function main() {
  const which = process.argv[2] ?? 'containerd';
  const repeat = Number(process.argv[3] ?? 3);
  const busybox = await buildBusyboxImage();
  const side = which === 'containerd' ? await startContainerd() : await startFlotilla();
  const upstream = side.socket;
  const psock = path.join(os.tmpdir(), `flotilla-callpath-${process.pid}.sock`);
  fs.rmSync(psock, { force: true });
  let rows: { path: string; t: number; d?: number }[] = [];
  let t0 = 0;
  const server = http2.createServer();
  server.on('session', (sess) => {
    const up = http2.connect('http://localhost', { createConnection: () => net.connect(upstream) });
    sess.on('close', () => up.close());
    sess.on('stream', (stream, headers) => {
      const row = { path: String(headers[':path']), t: performance.now() - t0 } as { path: string; t: number; d?: number };
      rows.push(row);
      const h: http2.OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(headers)) if (!k.startsWith(':') || k === ':path' || k === ':method' || k === ':authority' || k === ':scheme') h[k] = v;
      const ustream = up.request(h, { endStream: false });
      stream.pipe(ustream);
      ustream.on('response', (rh) => {
        const o = { ...rh };
        if (rh['grpc-status'] !== undefined) { row.d = performance.now() - t0 - row.t; stream.respond(o, { endStream: true }); return; }
        stream.respond(o, { waitForTrailers: true });
      });
      ustream.on('data', (c) => stream.write(c));
      ustream.on('trailers', (tr) => { row.d = performance.now() - t0 - row.t; stream.once('wantTrailers', () => stream.sendTrailers(tr)); stream.end(); });
      ustream.on('end', () => { if (row.d === undefined) row.d = performance.now() - t0 - row.t; });
      ustream.on('error', () => stream.destroy());
      stream.on('error', () => ustream.destroy());
    });
  });
  try {
    await new Promise<void>((r) => server.listen(psock, r));
    const pside: Side = { ...side, socket: psock };
    const r = await side.ctr(['images', 'import', busybox.archivePath], { namespace: NAMESPACE });
    if (r.code !== 0) throw new Error(r.stderr);
    for (let i = 0; i < 2; i++) await timedCtr(side, ['run', '--rm', busybox.name, `w-${i}`, '/bin/true']);
    for (let i = 0; i < repeat; i++) {
      rows = [];
      t0 = performance.now();
      const wall = await timedCtr(pside, ['run', '--rm', busybox.name, `t-${i}`, '/bin/true'], { timeoutMs: 20_000 });
      console.log(`--- ${which} run ${i}: ${(wall * 1000).toFixed(0)} ms`);
      for (const x of rows) console.log(x.t.toFixed(1).padStart(8), (x.d ?? -1).toFixed(1).padStart(7), x.path);
    }
  } finally {
    // Also when a run fails: a side left running is a daemon nobody stops.
    server.close();
    fs.rmSync(psock, { force: true });
    await side.stop();
  }
}
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
