// The critical path of `ctr run --rm` as seen on NATS: every request and event of one run
// with its start (ms after ctr was started) and how long its reply took, after two
// untimed warm-up runs. Where roundtrips.ts counts, this orders.
//   node --import tsx tools/bench/timeline.ts [--repeat N]
// PROF_DIR=<dir> also profiles the apps (as bench --cpu-prof); QUIET=1 prints wall times only.
// The stack runs with direct links off (FLOTILLA_DIRECT=off unless set): requests over links
// never cross nats-server, so this tool would see only events. callpath.ts shows the
// client's view with links on.
import path from 'node:path';
import { connect } from 'nats';
import { buildBusyboxImage } from '@flotilla/testing';
import { startFlotilla } from './sides.js';
import { NAMESPACE, timedCtr } from './workloads.js';

async function main(): Promise<void> {
  const repeat = Number(process.argv[process.argv.indexOf('--repeat') + 1] || 3);
  const busybox = await buildBusyboxImage();
  const prof = process.env.PROF_DIR;
  const env: NodeJS.ProcessEnv = { FLOTILLA_DIRECT: process.env.FLOTILLA_DIRECT ?? 'off' };
  if (prof) Object.assign(env, { NODE_OPTIONS: `--require ${path.join(__dirname, 'cpuprof-preload.cjs')}`, FLOTILLA_CPU_PROF_DIR: prof });
  const side = await startFlotilla({ env });
  try {
    const r = await side.ctr(['images', 'import', busybox.archivePath], { namespace: NAMESPACE });
    if (r.code !== 0) throw new Error(r.stderr);
    await timedCtr(side, ['run', '--rm', busybox.name, 'w-0', '/bin/true']);
    await timedCtr(side, ['run', '--rm', busybox.name, 'w-1', '/bin/true']);
    const nc = await connect({ servers: side.natsUrl! });
    for (let i = 0; i < repeat; i++) {
      const pending = new Map<string, { subject: string; t: number; i: number }>();
      const rows: { subject: string; t: number; end?: number }[] = [];
      const sub = nc.subscribe('>', {
        callback: (_e, m) => {
          const t = performance.now();
          if (m.subject.startsWith('$SRV')) return;
          const p = pending.get(m.subject);
          if (p) { if (rows[p.i]!.end === undefined) rows[p.i]!.end = t; return; }
          if (m.subject.startsWith('_INBOX')) return;
          rows.push({ subject: m.subject.replace(/^flotilla\.v1\./, ''), t });
          if (m.reply) pending.set(m.reply, { subject: m.subject, t, i: rows.length - 1 });
        },
      });
      await nc.flush();
      const t0 = performance.now();
      const wall = await timedCtr(side, ['run', '--rm', busybox.name, `t-${i}`, '/bin/true']);
      await nc.flush();
      await new Promise((res) => setTimeout(res, 200));
      sub.unsubscribe();
      console.log(`--- run ${i}: ${(wall * 1000).toFixed(0)} ms`);
      if (process.env.QUIET) continue;
      for (const row of rows) console.log(`${(row.t - t0).toFixed(1).padStart(8)} ${row.end !== undefined ? (row.end - row.t).toFixed(1).padStart(7) : '      -'}  ${row.subject}`);
    }
    await nc.close();
  } finally {
    await side.stop();
  }
}
main().catch((e) => { console.error(e); process.exitCode = 1; });
