// Per-call latency of small calls through the containerd Go client (grpc-go), on either side:
// Version (answered by the gateway itself), a namespace Get, content Info and a small content
// Read, an image Get, 500 times each, interleaved; prints p10/p50/p90 per call. It shows the
// fixed cost of one forwarded call, which `ctr run --rm` pays ~30 times.
//   node --import tsx tools/bench/probe.ts [containerd,flotilla]
//   PROBE_N=2000 PROBE_ENV=KEY=v,KEY2=w node --import tsx tools/bench/probe.ts flotilla
import { buildBusyboxImage, buildGoTest, runGoTest } from '@flotilla/testing';
import { startContainerd, startFlotilla } from './sides.js';

/** PROBE_ENV's `KEY=v,KEY2=w`, as extra environment for flotilla's processes. */
function probeEnv(): Record<string, string> {
  const spec = process.env.PROBE_ENV;
  if (!spec) return {};
  return Object.fromEntries(spec.split(',').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

async function main() {
  const busybox = await buildBusyboxImage();
  const bin = await buildGoTest('probe');
  for (const which of (process.argv[2] ?? 'containerd,flotilla').split(',')) {
    const side = which === 'containerd' ? await startContainerd() : await startFlotilla({ env: probeEnv() });
    try {
      const r = await side.ctr(['images', 'import', busybox.archivePath], { namespace: 'probe' });
      if (r.code !== 0) throw new Error(r.stderr);
      const env: Record<string, string> = { BENCH_ADDRESS: side.socket, BENCH_NAMESPACE: 'probe', BENCH_IMAGE: busybox.name };
      if (process.env.PROBE_N) env.PROBE_N = process.env.PROBE_N;
      const g = await runGoTest(bin, ['-test.run', 'TestProbe', '-test.v'], env);
      console.log(`--- ${which}`);
      console.log(g.output.split('\n').filter((l) => l.startsWith('PROBE') || l.includes('FAIL')).join('\n'));
    } finally {
      await side.stop();
    }
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e);
  process.exit(1);
});
