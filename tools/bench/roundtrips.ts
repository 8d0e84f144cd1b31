// Where one ctr command spends flotilla's effort: starts a stack, runs the command (after
// one untimed warm-up of the same command) and reports the NATS requests it caused, per
// subject, the PostgreSQL transactions, and the CPU time each process used (shims and
// runc are short-lived and not counted); --containerd runs it against Debian's containerd
// for the CPU comparison. With direct links on (the default), NATS sees requests only until each
// caller has learned the link for their subject: FLOTILLA_DIRECT=off counts every request.
//   node --import tsx tools/bench/roundtrips.ts [--repeat N] [--stdin-mib M] [--statements] -- run --rm {busybox} {id} /bin/true
// --containers N: first N containers in the namespace (copies of one ctr created), e.g. for `-- containers list`.
// --statements also lists the SQL statements per command (log_statement=all while measuring).
// --cpu-prof DIR profiles each app while the measured commands run (not the warm-up):
// DIR/main-<app>-<pid>.cpuprofile.
// --perf FILE records on-CPU samples of every process of the side while they run (`perf
// record -e cpu-clock -g`; the apps run with --perf-basic-prof, so JS frames have names in
// /tmp/perf-<pid>.map): unlike --cpu-prof, which samples the main thread's wall time,
// it shows kernel time, V8's compiler and GC threads, and PostgreSQL. `perf report -i FILE`.
// --warmups N: untimed runs before the measured ones (default 1); node's JIT keeps
// optimising over the first ~100 `ctr run --rm` of a fresh stack.
// `{busybox}` is replaced by the test image (imported first), `{id}` by a fresh id; with
// --stdin-mib, each run reads a fresh random file of M MiB on stdin (content ingest {id}).
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from 'nats';
import { connectDb } from '@flotilla/db';
import { MetadataStore } from '@flotilla/metadata';
import { buildBusyboxImage } from '@flotilla/testing';
import { cpuProfileEnv, startContainerd, startFlotilla } from './sides.js';
import { NAMESPACE, timedCtr } from './workloads.js';

const TICK = 100; // USER_HZ on Linux

/** [user, system] CPU ticks of a process. */
async function cpuTicks(pid: number): Promise<[number, number]> {
  const st = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  if (!st) return [0, 0];
  const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
  return [Number(f[11]), Number(f[12])]; // utime, stime
}

/** Folds per-instance, per-node and reply subjects so counts add up per method. */
function normalize(subject: string): string {
  if (subject.startsWith('_INBOX.')) return '_INBOX (replies)';
  return subject.replace(/^flotilla\.v1\.inst\.[^.]+\./, 'flotilla.v1.inst.*.').replace(/^flotilla\.v1\.stream\.[^.]+/, 'flotilla.v1.stream.*').replace(/^flotilla\.v1\.node\.[^.]+\./, 'flotilla.v1.node.*.');
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let repeat = 5;
  let stdinMiB = 0;
  let reference = false;
  let statements = false;
  let containers = 0;
  let cpuProf = '';
  let perfOut = '';
  let warmups = 1;
  const dash = argv.indexOf('--');
  for (let i = 0; i < (dash < 0 ? argv.length : dash); i++) {
    if (argv[i] === '--repeat') repeat = Number(argv[++i]);
    else if (argv[i] === '--stdin-mib') stdinMiB = Number(argv[++i]);
    else if (argv[i] === '--containerd') reference = true;
    else if (argv[i] === '--statements') statements = true;
    else if (argv[i] === '--containers') containers = Number(argv[++i]);
    else if (argv[i] === '--cpu-prof') cpuProf = path.resolve(argv[++i]!);
    else if (argv[i] === '--perf') perfOut = path.resolve(argv[++i]!);
    else if (argv[i] === '--warmups') warmups = Number(argv[++i]);
  }
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-rt-'));
  const input = async (i: number) => {
    if (!stdinMiB) return undefined;
    const f = path.join(tmp, `in-${i}`);
    await fs.writeFile(f, randomBytes(stdinMiB << 20));
    return f;
  };
  const cmd = dash < 0 ? ['run', '--rm', '{busybox}', '{id}', '/bin/true'] : argv.slice(dash + 1);
  const busybox = await buildBusyboxImage();
  const env = cpuProf ? await cpuProfileEnv(cpuProf, { signal: true }) : perfOut ? { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --perf-basic-prof`.trim() } : undefined;
  const side = reference ? await startContainerd() : await startFlotilla({ env });
  try {
    const r = await side.ctr(['images', 'import', busybox.archivePath], { namespace: NAMESPACE });
    if (r.code !== 0) throw new Error(r.stderr);
    if (containers && !reference) {
      // N copies of one container ctr made (its ~3 KB OCI spec), inserted directly.
      const c = await side.ctr(['containers', 'create', busybox.name, 'rt-seed'], { namespace: NAMESPACE });
      if (c.code !== 0) throw new Error(c.stderr);
      const db = connectDb(side.databaseUrl!, { max: 1 });
      await db`INSERT INTO metadata_containers (namespace, id, labels, image, runtime_name, runtime_options, spec, snapshotter, snapshot_key, extensions)
        SELECT namespace, 'rt-seed-' || lpad(i::text, 6, '0'), labels, image, runtime_name, runtime_options, spec, snapshotter, '', extensions
        FROM metadata_containers, generate_series(1, ${containers - 1}) i WHERE namespace = ${NAMESPACE} AND id = 'rt-seed'`;
      // Their stored messages, as the metadata service writes them for rows it finds without.
      await new MetadataStore(db, () => {}).containerEncodeMissing();
      // Settled as after a real run of creates, not vacuumed and checkpointed while measured.
      await db`VACUUM ANALYZE metadata_containers`;
      await db`CHECKPOINT`;
      await db.end({ timeout: 5 });
    }
    const args = (i: number) => cmd.map((a) => a.replace('{busybox}', busybox.name).replace('{id}', i < 0 ? `rt-w${-i}` : `rt-${i + 1}`));
    for (let i = 0; i < warmups; i++) await timedCtr(side, args(-1 - i), { stdinFile: await input(-1 - i) });
    // Debian's containerd (--containerd): only the CPU per process, for comparison.
    const nc = reference ? undefined : await connect({ servers: side.natsUrl!, name: 'bench-roundtrips' });
    const counts = new Map<string, { msgs: number; bytes: number }>();
    const sub = nc?.subscribe('>', {
      callback: (_e, m) => {
        const k = normalize(m.subject);
        const c = counts.get(k) ?? { msgs: 0, bytes: 0 };
        c.msgs++;
        c.bytes += m.data.length;
        counts.set(k, c);
      },
    });
    await nc?.flush();
    const sql = reference ? undefined : connectDb(side.databaseUrl!, { max: 1, appName: 'bench-roundtrips' });
    const xacts = async () => (sql ? Number((await sql`select xact_commit + xact_rollback as n from pg_stat_database where datname = current_database()`)[0]!.n) : 0);
    // WAL flushes (each an fdatasync of the WAL: one per committed write transaction, fewer
    // when commits group).
    const walSyncs = async () => (sql ? Number((await sql`select wal_sync as n from pg_stat_wal`)[0]!.n) : 0);
    const groups = await side.processes();
    const pids = groups.flatMap((g) => g.pids.map((pid) => [g.name, pid] as const));
    const cpu0 = await Promise.all(pids.map(([, p]) => cpuTicks(p)));
    let pgLog = '';
    let logFrom = 0;
    if (sql && statements) {
      pgLog = `${(await sql`select current_setting('data_directory') as d`)[0]!.d}.log`;
      await sql`alter system set log_statement = 'all'`;
      await sql`select pg_reload_conf()`;
      await new Promise((res) => setTimeout(res, 300));
      logFrom = (await fs.stat(pgLog)).size;
    }
    const x0 = await xacts();
    const w0 = await walSyncs();
    const times: number[] = [];
    const files = await Promise.all(Array.from({ length: repeat }, (_, i) => input(i)));
    // The apps start and stop profiling: node processes only (nats-server takes SIGUSR2 as
    // lame-duck mode), known by executable (the apps retitle themselves: cmdline won't say node).
    const profiled = cpuProf ? (await Promise.all(pids.map(async ([, p]) => ((await fs.readlink(`/proc/${p}/exe`).catch(() => '')) === process.execPath ? p : 0)))).filter(Boolean) : [];
    const toggleProfiles = () => profiled.forEach((p) => process.kill(p, 'SIGUSR2'));
    toggleProfiles();
    const perf = perfOut ? spawn('perf', ['record', '-q', '-e', 'cpu-clock', '-F', '4999', '-g', '-o', perfOut, '-p', pids.map(([, p]) => p).join(',')], { stdio: 'inherit' }) : undefined;
    if (perf) await new Promise((res) => setTimeout(res, 500));
    for (let i = 0; i < repeat; i++) times.push(await timedCtr(side, args(i), { stdinFile: files[i] }));
    if (perf) await new Promise((res) => { perf.on('exit', res); perf.kill('SIGINT'); });
    toggleProfiles();
    await nc?.flush();
    await new Promise((res) => setTimeout(res, 300));
    const x1 = await xacts();
    const w1 = await walSyncs();
    const stmts = new Map<string, number>();
    if (sql && statements) {
      await sql`alter system reset log_statement`;
      await sql`select pg_reload_conf()`;
      const fh = await fs.open(pgLog, 'r');
      const { size } = await fh.stat();
      const buf = Buffer.alloc(size - logFrom);
      await fh.read(buf, 0, buf.length, logFrom);
      await fh.close();
      for (const m of buf.toString('utf8').matchAll(/LOG:\s+(?:statement|execute [^:]*):\s*(.*)/g)) {
        const k = m[1]!.replace(/\s+/g, ' ').slice(0, 110);
        if (/pg_stat_database|alter system|pg_reload_conf/.test(k)) continue;
        stmts.set(k, (stmts.get(k) ?? 0) + 1);
      }
    }
    const cpu1 = await Promise.all(pids.map(([, p]) => cpuTicks(p)));
    sub?.unsubscribe();
    await nc?.close();
    await sql?.end({ timeout: 5 });

    const out: string[] = [];
    out.push(`ctr ${args(0).join(' ')}  x${repeat}: ${times.map((t) => (t * 1000).toFixed(0)).join(' ')} ms`);
    if (!reference) out.push(`PostgreSQL transactions per command: ${((x1 - x0 - 2) / repeat).toFixed(1)} (2 of the measured ones are this tool's own reads); WAL syncs: ${((w1 - w0) / repeat).toFixed(1)}`);
    if (stmts.size) {
      out.push('SQL statements per command:');
      for (const [k, n] of [...stmts].sort((a, b) => b[1] - a[1])) out.push(`  ${(n / repeat).toFixed(1).padStart(7)}  ${k}`);
    }
    if (!reference) out.push(`NATS messages per command, by subject${process.env.FLOTILLA_DIRECT === 'off' ? '' : ' (requests over direct links do not cross nats-server: FLOTILLA_DIRECT=off counts them all)'}:`);
    const rows = [...counts].sort((a, b) => b[1].msgs - a[1].msgs);
    let total = 0;
    for (const [k, c] of rows) {
      if (k.startsWith('$SRV')) continue;
      total += c.msgs;
      out.push(`  ${(c.msgs / repeat).toFixed(1).padStart(7)}  ${(c.bytes / repeat / 1024).toFixed(1).padStart(9)} KiB  ${k}`);
    }
    if (!reference) out.push(`  ${(total / repeat).toFixed(1).padStart(7)}  total`);
    out.push('CPU ms per command, by process (user + system):');
    const byName = new Map<string, [number, number]>();
    const perRun = (ticks: number) => (ticks * 1000) / TICK / repeat;
    pids.forEach(([name], i) => {
      const [u, s] = byName.get(name) ?? [0, 0];
      byName.set(name, [u + perRun(cpu1[i]![0] - cpu0[i]![0]), s + perRun(cpu1[i]![1] - cpu0[i]![1])]);
    });
    for (const [name, [u, s]] of [...byName].sort((a, b) => b[1][0] + b[1][1] - a[1][0] - a[1][1])) {
      out.push(`  ${(u + s).toFixed(0).padStart(7)}  ${name} (${u.toFixed(0)} + ${s.toFixed(0)})`);
    }
    process.stdout.write(out.join('\n') + '\n');
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
    await side.stop();
    // --perf-basic-prof also makes each app write an (empty) isolate-*-v8.log into its cwd.
    if (perfOut) for (const f of await fs.readdir('.')) if (/^isolate-0x[0-9a-f]+-\d+-v8\.log$/.test(f)) await fs.rm(f, { force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`roundtrips: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
