// Smoke run of `npm run bench -- --quick`: both flotilla and Debian's containerd start, the
// cheap workloads (one through ctr, one through the Go client) measure both sides, and the
// JSON, SVG and markdown come out in the expected shape. Timings are never asserted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { BenchResults } from '../tools/bench/report.js';

const ROOT = path.resolve(__dirname, '..');

function bench(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'tools/bench/main.ts', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => child.kill('SIGKILL'), 8 * 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(t);
      resolve({ code: code ?? 1, stdout, stderr });
    });
  });
}

test('npm run bench -- --quick measures both sides and writes JSON, SVG and markdown', async () => {
  const out = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-smoke-'));
  try {
    const r = await bench(['--quick', '--only', 'run-rm,containers-1k', '--rounds', '1', '--out', out]);
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    const res = JSON.parse(await fs.readFile(path.join(out, 'benchmarks.json'), 'utf8')) as BenchResults;
    assert.equal(res.schema, 'flotilla-bench/v1');
    assert.equal(res.quick, true);
    assert.match(res.versions.flotilla, /\+flotilla/);
    assert.match(res.versions.containerd, /^v?1\.6\.20/);
    assert.deepEqual(
      res.metrics.map((m) => m.id),
      ['run-rm', 'containers-1k-create', 'containers-1k-list', 'containers-1k-delete'],
    );
    for (const m of res.metrics) {
      assert.equal(m.status, 'measured', `${m.id}: ${m.note}`);
      for (const side of [m.flotilla, m.containerd]) {
        assert.equal(side.error, undefined);
        assert.ok(side.samples.length >= 1, `${m.id}: no samples`);
        for (const s of side.samples) assert.ok(Number.isFinite(s) && s > 0, `${m.id}: sample ${s}`);
        if (side.error === undefined) assert.ok(side.p10 <= side.median && side.median <= side.p90);
      }
      assert.ok(m.ratio !== undefined && Number.isFinite(m.ratio) && m.ratio > 0, `${m.id}: ratio ${m.ratio}`);
    }
    assert.equal(res.metrics.find((m) => m.id === 'containers-1k-list')!.flotilla.samples.length, 3);
    assert.equal(res.metrics.find((m) => m.id === 'run-rm')!.target, 1);

    // Memory: every flotilla process and server separately; containerd's daemon.
    const groups = (side: 'flotilla' | 'containerd') => Object.fromEntries(res.memory[side].idle.map((g) => [g.name, g]));
    const f = groups('flotilla');
    for (const name of ['gateway', 'content', 'snapshotter', 'images', 'metadata', 'tasks', 'events', 'node-agent', 'nats-server', 'postgresql']) {
      assert.ok(f[name] && f[name].processes >= 1 && f[name].rssKiB > 0, `flotilla ${name}: ${JSON.stringify(f[name])}`);
    }
    assert.ok(f.postgresql!.processes > 1, 'PostgreSQL counted with its backends');
    const c = groups('containerd');
    assert.ok(c.containerd && c.containerd.processes === 1 && c.containerd.rssKiB > 0, JSON.stringify(c));
    assert.ok('shims' in f && 'shims' in c);
    for (const side of ['flotilla', 'containerd'] as const) {
      assert.ok(res.memory[side].peakSampled.rssKiB >= res.memory[side].idleTotal.rssKiB);
    }
    assert.ok(res.memory.ratio.idleRss > 0 && Number.isFinite(res.memory.ratio.peakRss) && Number.isFinite(res.memory.ratio.peakPss));

    const svg = await fs.readFile(path.join(out, 'benchmarks.svg'), 'utf8');
    assert.match(svg, /^<svg /);
    assert.equal(svg.match(/<rect x=/g)?.length, res.metrics.length + 2);
    const md = await fs.readFile(path.join(out, 'benchmarks.md'), 'utf8');
    assert.match(md, /!\[ratios flotilla\/containerd\]\(benchmarks\.svg\)/);
    for (const m of res.metrics) assert.ok(md.includes(`\`${m.id}\``), `${m.id} missing from the markdown`);
    assert.match(r.stdout, /^run-rm\s/m);

    // Unknown workloads are refused before anything starts.
    const bad = await bench(['--quick', '--only', 'nope', '--out', out]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /unknown workload\(s\) nope/);
  } finally {
    await fs.rm(out, { recursive: true, force: true });
  }
});
