// The environment (and node options) the supervisor gives each app, seen from inside the
// app: stand-in bundles record them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { APPS, APP_ENV, Supervisor } from '@flotilla/launcher';

const MALLOC = ['MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_'];

async function envs(env: NodeJS.ProcessEnv): Promise<Map<string, Record<string, string>>> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-sup-'));
  const out = path.join(dir, 'out');
  await fs.mkdir(out);
  for (const app of APPS) {
    await fs.mkdir(path.join(dir, 'dist', app), { recursive: true });
    await fs.writeFile(
      path.join(dir, 'dist', app, 'main.js'),
      `require('fs').writeFileSync(${JSON.stringify(path.join(out, app))}, JSON.stringify({ ...process.env, EXEC_ARGV: process.execArgv.join(' ') })); setInterval(() => {}, 1000);\n`,
    );
  }
  const sup = new Supervisor({ distDir: path.join(dir, 'dist'), logDir: path.join(dir, 'logs'), env });
  try {
    await sup.start();
    const until = Date.now() + 20_000;
    while ((await fs.readdir(out)).length < APPS.length) {
      assert.ok(Date.now() < until, `apps started: ${(await fs.readdir(out)).join(', ')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const got = new Map<string, Record<string, string>>();
    for (const app of APPS) got.set(app, JSON.parse(await fs.readFile(path.join(out, app), 'utf8')));
    return got;
  } finally {
    await sup.stop(2000);
    await fs.rm(dir, { recursive: true, force: true });
  }
}

test('supervisor: the snapshotter gets the malloc settings, no other app does; a variable the launcher was given wins', async () => {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !MALLOC.includes(k)));
  const got = await envs({ ...base, FLOTILLA_PROBE: '1' });
  for (const app of APPS) {
    const e = got.get(app)!;
    assert.equal(e.FLOTILLA_PROBE, '1', app);
    for (const k of MALLOC) assert.equal(e[k], APP_ENV[app]?.[k], `${app} ${k}`);
  }
  assert.equal(got.get('snapshotter')!.MALLOC_MMAP_THRESHOLD_, String(4 << 20));

  const given = await envs({ ...base, MALLOC_TOP_PAD_: '0' });
  assert.equal(given.get('snapshotter')!.MALLOC_TOP_PAD_, '0');
  assert.equal(given.get('snapshotter')!.MALLOC_MMAP_THRESHOLD_, String(4 << 20));
});

test('supervisor: apps run without source maps unless FLOTILLA_SOURCE_MAPS=1', async () => {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'FLOTILLA_SOURCE_MAPS'));
  for (const [app, e] of await envs(base)) assert.equal(e.EXEC_ARGV, '', app);
  for (const [app, e] of await envs({ ...base, FLOTILLA_SOURCE_MAPS: '1' })) assert.equal(e.EXEC_ARGV, '--enable-source-maps', app);
});
