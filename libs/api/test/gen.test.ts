// The committed generated code must be what `npm run gen` produces today.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function files(dir: string, base = dir): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(path.join(dir, e.name), base) : [path.relative(base, path.join(dir, e.name))],
  ).sort();
}

test('libs/api/src/gen is up to date with npm run gen', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'flotilla-gen-'));
  try {
    execFileSync('bash', ['tools/gen-proto.sh', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    const committed = 'libs/api/src/gen';
    assert.deepEqual(files(out), files(committed), 'generated file list differs: run npm run gen');
    for (const f of files(out)) {
      assert.ok(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(committed, f))), `${f} is stale: run npm run gen`);
    }
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
