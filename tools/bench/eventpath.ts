// Where a /tasks/exit event's time goes in flotilla: the Go client's TestEventLatency runs
// against a stack while this process listens on the event's NATS subject, so each event's
// latency splits into exit -> on NATS and NATS -> Go subscriber (same host, same clock).
//   node --import tsx tools/bench/eventpath.ts [count]
import { connect } from 'nats';
import { buildBusyboxImage, buildGoTest, runGoTest } from '@flotilla/testing';
import { startFlotilla } from './sides.js';
import { NAMESPACE } from './workloads.js';

const nowNs = () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));

async function main(): Promise<void> {
  const count = Number(process.argv[2] ?? 8);
  const [busybox, bin] = await Promise.all([buildBusyboxImage(), buildGoTest('bench')]);
  const side = await startFlotilla();
  try {
    const r = await side.ctr(['images', 'import', busybox.archivePath], { namespace: NAMESPACE });
    if (r.code !== 0) throw new Error(r.stderr);
    const nc = await connect({ servers: side.natsUrl!, name: 'bench-eventpath' });
    const onNats: bigint[] = [];
    nc.subscribe('flotilla.v1.events.tasks.exit', { callback: () => onNats.push(nowNs()) });
    await nc.flush();
    const out = await runGoTest(bin, ['-test.run=^TestEventLatency$'], { BENCH_ADDRESS: side.socket, BENCH_NAMESPACE: NAMESPACE, BENCH_IMAGE: busybox.name, BENCH_COUNT: String(count) });
    const line = /^BENCHJSON (.*)$/m.exec(out.output)?.[1];
    if (!line) throw new Error(out.output);
    const res = JSON.parse(line) as { exit_to_subscriber_s: number[]; received_unix_ns: number[] };
    await nc.close();
    process.stdout.write('exit->subscriber  exit->NATS  NATS->subscriber (ms)\n');
    res.received_unix_ns.forEach((recv, i) => {
      const total = res.exit_to_subscriber_s[i]! * 1000;
      const natsToSub = Number(BigInt(recv) - onNats[i]!) / 1e6;
      process.stdout.write(`${total.toFixed(2).padStart(16)}  ${(total - natsToSub).toFixed(2).padStart(10)}  ${natsToSub.toFixed(2).padStart(16)}\n`);
    });
  } finally {
    await side.stop();
  }
}

main().catch((err) => {
  process.stderr.write(`eventpath: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
