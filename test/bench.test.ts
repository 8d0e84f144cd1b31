// The benchmark harness's pure parts: option parsing, statistics, and the report it writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseArgs } from '../tools/bench/args.js';
import { BEGIN, END, spliceMarkdown, svgChart, type BenchResults, type MetricResult } from '../tools/bench/report.js';
import { quantile, summarize } from '../tools/bench/stats.js';

test('bench options: --only lists, --rounds, --quick, --out; bad input is refused', () => {
  const a = parseArgs(['--only', 'run-rm,ingest', '--only=events', '--rounds', '5', '--quick', '--out=/tmp/x']);
  assert.deepEqual(a.only, ['run-rm', 'ingest', 'events']);
  assert.equal(a.rounds, 5);
  assert.equal(a.quick, true);
  assert.equal(a.out, '/tmp/x');
  assert.throws(() => parseArgs(['--rounds', '0']), /positive integer/);
  assert.throws(() => parseArgs(['--rounds']), /needs a value/);
  assert.throws(() => parseArgs(['--fast']), /unknown option --fast/);
});

test('summaries: median and interpolated p10/p90 over unsorted samples', () => {
  const s = summarize([5, 1, 4, 2, 3]);
  assert.equal(s.median, 3);
  assert.equal(s.min, 1);
  assert.equal(s.max, 5);
  assert.ok(Math.abs(s.p10 - 1.4) < 1e-9, String(s.p10));
  assert.ok(Math.abs(s.p90 - 4.6) < 1e-9, String(s.p90));
  assert.deepEqual(s.samples, [5, 1, 4, 2, 3]);
  assert.equal(quantile([2, 4], 0.5), 3);
  assert.equal(summarize([7]).p90, 7);
  assert.throws(() => quantile([], 0.5));
});

function results(metrics: MetricResult[]): BenchResults {
  const mem = { idle: [], idleTotal: { rssKiB: 100, pssKiB: 90 }, peakSampled: { rssKiB: 120, pssKiB: 100 }, end: [] };
  return {
    schema: 'flotilla-bench/v1',
    date: '2025-01-01T00:00:00.000Z',
    quick: true,
    options: { only: [] },
    host: { cpus: 2, kernel: 'k', node: 'v20', loadavgStart: [0, 0, 0], loadavgEnd: [0, 0, 0], commit: 'abc' },
    versions: { flotilla: 'f', containerd: 'c' },
    metrics,
    memory: { flotilla: mem, containerd: mem, ratio: { idleRss: 2, idlePss: 1.5, peakRss: 3, peakPss: 2.5 } },
  };
}

const measured = (id: string, ratio: number, target?: number): MetricResult => ({
  id,
  workload: id,
  label: `label <${id}>`,
  description: 'd',
  unit: 's',
  rounds: 1,
  flotilla: summarize([ratio]),
  containerd: summarize([1]),
  ratio,
  target,
  meetsTarget: target === undefined ? undefined : ratio <= target,
  status: 'measured',
});

test('the chart has one bar per measured ratio, escapes labels and marks targets', () => {
  const svg = svgChart(
    results([
      measured('a', 0.5, 1),
      measured('b', 8),
      { ...measured('c', 1), ratio: undefined, status: 'not yet measurable', flotilla: { error: 'x', samples: [] } },
    ]),
  );
  assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.ok(svg.trimEnd().endsWith('</svg>'));
  // a, b and the two memory ratios; c is drawn as text only.
  assert.equal(svg.match(/<rect x=/g)?.length, 4);
  assert.match(svg, /label &lt;a&gt;/);
  assert.match(svg, /not yet measurable/);
  assert.equal(svg.match(/stroke-dasharray/g)?.length, 1);
  assert.match(svg, />0\.50</);
  assert.match(svg, />8\.00</);
});

test('the generated section replaces only what is between its markers', () => {
  const section = `${BEGIN}\nnew\n${END}`;
  const fresh = spliceMarkdown(undefined, section);
  assert.match(fresh, /^# Benchmarks/);
  assert.ok(fresh.includes(section));
  const doc = `# Title\n\nintro\n\n${BEGIN}\nold\n${END}\n\n## Findings\nkept\n`;
  const out = spliceMarkdown(doc, section);
  assert.equal(out, `# Title\n\nintro\n\n${section}\n\n## Findings\nkept\n`);
  assert.equal(spliceMarkdown('# T\n', section), `# T\n\n${section}\n`);
});
