// Where one ctr command spends flotilla's effort: starts a stack, runs the command (after
// one untimed warm-up of the same command) and reports the NATS requests it caused, per
// subject, the PostgreSQL transactions, and the CPU time each process used.
//   node --import tsx tools/bench/roundtrips.ts [--repeat N] -- run --rm {busybox} {id} /bin/true
// `{busybox}` is replaced by the test image (imported first), `{id}` by a fresh id.
import fs from 'node:fs/promises';
import { connect } from 'nats';
import postgres from 'postgres';
import { buildBusyboxImage } from '@flotilla/testing';
import { startFlotilla } from './sides.js';
import { NAMESPACE, timedCtr } from './workloads.js';

const TICK = 100; // USER_HZ on Linux

async function cpuTicks(pid: number): Promise<number> {
  const st = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  if (!st) return 0;
  const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime
}

/** Folds per-instance, per-node and reply subjects so counts add up per method. */
function normalize(subject: string): string {
  if (subject.startsWith('_INBOX.')) return '_INBOX (replies)';
  return subject.replace(/^flotilla\.v1\.inst\.[^.]+\./, 'flotilla.v1.inst.*.').replace(/^flotilla\.v1\.stream\.[^.]+/, 'flotilla.v1.stream.*').replace(/^flotilla\.v1\.node\.[^.]+\./, 'flotilla.v1.node.*.');
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let repeat = 5;
  const dash = argv.indexOf('--');
  for (let i = 0; i < (dash < 0 ? argv.length : dash); i++) if (argv[i] === '--repeat') repeat = Number(argv[++i]);
  const cmd = dash < 0 ? ['run', '--rm', '{busybox}', '{id}', '/bin/true'] : argv.slice(dash + 1);
  const busybox = await buildBusyboxImage();
  const side = await startFlotilla();
  try {
    const r = await side.ctr(['images', 'import', busybox.archivePath], { namespace: NAMESPACE });
    if (r.code !== 0) throw new Error(r.stderr);
    const args = (i: number) => cmd.map((a) => a.replace('{busybox}', busybox.name).replace('{id}', `rt-${i}`));
    await timedCtr(side, args(-1));
    const natsUrl = side.natsUrl!;
    const nc = await connect({ servers: natsUrl, name: 'bench-roundtrips' });
    const counts = new Map<string, { msgs: number; bytes: number }>();
    const sub = nc.subscribe('>', {
      callback: (_e, m) => {
        const k = normalize(m.subject);
        const c = counts.get(k) ?? { msgs: 0, bytes: 0 };
        c.msgs++;
        c.bytes += m.data.length;
        counts.set(k, c);
      },
    });
    await nc.flush();
    const sql = postgres(side.databaseUrl!, { max: 1 });
    const xacts = async () => Number((await sql`select xact_commit + xact_rollback as n from pg_stat_database where datname = current_database()`)[0]!.n);
    const groups = await side.processes();
    const pids = groups.flatMap((g) => g.pids.map((pid) => [g.name, pid] as const));
    const cpu0 = await Promise.all(pids.map(([, p]) => cpuTicks(p)));
    const x0 = await xacts();
    const times: number[] = [];
    for (let i = 0; i < repeat; i++) times.push(await timedCtr(side, args(i)));
    await nc.flush();
    await new Promise((res) => setTimeout(res, 300));
    const x1 = await xacts();
    const cpu1 = await Promise.all(pids.map(([, p]) => cpuTicks(p)));
    sub.unsubscribe();
    await nc.close();
    await sql.end({ timeout: 5 });

    const out: string[] = [];
    out.push(`ctr ${args(0).join(' ')}  x${repeat}: ${times.map((t) => (t * 1000).toFixed(0)).join(' ')} ms`);
    out.push(`PostgreSQL transactions per command: ${((x1 - x0 - 2) / repeat).toFixed(1)} (2 of the measured ones are this tool's own reads)`);
    out.push('NATS messages per command, by subject:');
    const rows = [...counts].sort((a, b) => b[1].msgs - a[1].msgs);
    let total = 0;
    for (const [k, c] of rows) {
      if (k.startsWith('$SRV')) continue;
      total += c.msgs;
      out.push(`  ${(c.msgs / repeat).toFixed(1).padStart(7)}  ${(c.bytes / repeat / 1024).toFixed(1).padStart(9)} KiB  ${k}`);
    }
    out.push(`  ${(total / repeat).toFixed(1).padStart(7)}  total`);
    out.push('CPU ms per command, by process:');
    const byName = new Map<string, number>();
    pids.forEach(([name], i) => byName.set(name, (byName.get(name) ?? 0) + ((cpu1[i]! - cpu0[i]!) * 1000) / TICK / repeat));
    for (const [name, ms] of [...byName].sort((a, b) => b[1] - a[1])) out.push(`  ${ms.toFixed(0).padStart(7)}  ${name}`);
    process.stdout.write(out.join('\n') + '\n');
  } finally {
    await side.stop();
  }
}

main().catch((err) => {
  process.stderr.write(`roundtrips: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
