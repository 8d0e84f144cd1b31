// Latency of one small call, hop by hop: N sequential namespaces.Get (a) as a raw NATS echo
// between two connections of this process (nats-server's floor), (b) through the bus to the
// metadata service over NATS, (c) the same over the direct link it learns, (d) through the
// gateway with a grpc-js client, and (e) the gateway's own Version (gRPC alone).
//   node --import tsx tools/bench/latency.ts [N]      PROF_DIR=<dir> also profiles the apps
// With (d), the CPU each of the gateway and the metadata service used per call.
import { connect } from 'nats';
import * as grpc from '@grpc/grpc-js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Bus } from '@flotilla/bus';
import { startStack } from '@flotilla/testing';

const N = Number(process.argv[2] ?? 300);
/** CPU ms (user + system) a process has used so far. */
function cpuMs(pid: number | undefined): number {
  if (!pid) return 0;
  const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10; // USER_HZ = 100
}

function stats(name: string, xs: number[]) {
  xs.sort((a, b) => a - b);
  console.log(name.padEnd(34), 'p50', xs[xs.length >> 1]!.toFixed(3), 'p10', xs[Math.floor(xs.length * 0.1)]!.toFixed(3), 'p90', xs[Math.floor(xs.length * 0.9)]!.toFixed(3), 'ms');
}
async function main() {
  const prof = process.env.PROF_DIR;
  const stack = await startStack({ nodeId: 'lat', durable: true, env: prof ? { NODE_OPTIONS: `--require ${__dirname}/cpuprof-preload.cjs`, FLOTILLA_CPU_PROF_DIR: prof } : {} });
  try {
    const r = await stack.ctr(['namespaces', 'create', 'latns']);
    if (r.code !== 0) throw new Error(r.stderr);
    const nc = await connect({ servers: stack.env.NATS_URL });
    nc.subscribe('lat.echo', { callback: (_e, m) => m.respond(m.data) });
    const nc2 = await connect({ servers: stack.env.NATS_URL });
    const req = Buffer.from([0x0a, 5, ...Buffer.from('latns')]);
    const t: number[] = [];
    for (let i = 0; i < N; i++) { const s = performance.now(); await nc2.request('lat.echo', req); t.push(performance.now() - s); }
    stats('raw NATS echo (2 clients)', t);
    const bus = await Bus.connect({ url: stack.env.NATS_URL!, name: 'lat' });
    const t2: number[] = [];
    for (let i = 0; i < N; i++) { const s = performance.now(); await bus.request('flotilla.v1.svc.namespaces.Get', req, { namespace: 'latns' }); t2.push(performance.now() - s); }
    stats('bus namespaces.Get, NATS', t2);
    // A bus with its own direct link learns the metadata service's link from its first reply.
    const dbus = await Bus.connect({ url: stack.env.NATS_URL!, name: 'lat-direct', directDir: fs.mkdtempSync(path.join(os.tmpdir(), 'flotilla-lat-')) });
    await dbus.request('flotilla.v1.svc.namespaces.Get', req, { namespace: 'latns' });
    const t5: number[] = [];
    for (let i = 0; i < N; i++) { const s = performance.now(); await dbus.request('flotilla.v1.svc.namespaces.Get', req, { namespace: 'latns' }); t5.push(performance.now() - s); }
    stats('bus namespaces.Get, direct link', t5);
    await dbus.close();
    const client = new grpc.Client(`unix:${stack.socket}`, grpc.credentials.createInsecure());
    const call = () => new Promise<void>((res, rej) => {
      const md = new grpc.Metadata(); md.set('containerd-namespace', 'latns');
      client.makeUnaryRequest('/containerd.services.namespaces.v1.Namespaces/Get', (x: Buffer) => x, (x: Buffer) => x, req, md, (e) => (e ? rej(e) : res()));
    });
    const t3: number[] = [];
    const pids = stack.supervisor.pids();
    const cpu0 = [cpuMs(pids.gateway), cpuMs(pids.metadata)];
    for (let i = 0; i < N; i++) { const s = performance.now(); await call(); t3.push(performance.now() - s); }
    stats('grpc gateway namespaces.Get', t3);
    const [g, m] = [cpuMs(pids.gateway) - cpu0[0]!, cpuMs(pids.metadata) - cpu0[1]!];
    console.log(`  CPU per call: gateway ${(1000 * g / N).toFixed(0)} µs, metadata ${(1000 * m / N).toFixed(0)} µs`);
    const callV = () => new Promise<void>((res, rej) => {
      client.makeUnaryRequest('/containerd.services.version.v1.Version/Version', (x: Buffer) => x, (x: Buffer) => x, Buffer.alloc(0), new grpc.Metadata(), (e) => (e ? rej(e) : res()));
    });
    const t4: number[] = [];
    for (let i = 0; i < N; i++) { const s = performance.now(); await callV(); t4.push(performance.now() - s); }
    stats('grpc gateway Version (local)', t4);
    client.close(); await bus.close(); await nc.close(); await nc2.close();
  } finally { await stack.stop(); }
}
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
