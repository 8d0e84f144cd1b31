// npm run build: esbuild bundles each apps/<name>/src/main.ts to dist/apps/<name>/main.js and
// the launcher (tools/launcher/main.ts) to dist/tools/launcher.js. One file per process:
// start-up reads no node_modules tree, and the @flotilla/* aliases come from tsconfig.base.json.
//   node tools/build.mjs [--typecheck]   --typecheck also runs `tsc -p tsconfig.json --noEmit`
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const apps = fs
  .readdirSync(path.join(root, 'apps'))
  .filter((a) => fs.existsSync(path.join(root, 'apps', a, 'src', 'main.ts')))
  .sort();
const entryPoints = Object.fromEntries([
  ...apps.map((a) => [`apps/${a}/main`, path.join(root, 'apps', a, 'src', 'main.ts')]),
  ['tools/launcher', path.join(root, 'tools', 'launcher', 'main.ts')],
]);

let revision = 'dev';
try {
  revision = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
} catch {
  // not a git checkout
}

const started = Date.now();
await build({
  entryPoints,
  outdir: path.join(root, 'dist'),
  bundle: true,
  platform: 'node',
  target: 'node20',
  // ESM output; the CommonJS dependencies (@grpc/grpc-js, nats, ...) are wrapped by esbuild
  // and get a real require() for node built-ins from the banner.
  format: 'esm',
  sourcemap: true,
  // No keepNames: it wraps every named function and class the bundle creates in a runtime
  // __name() call (Object.defineProperty on each, closures made per call included). In a
  // steady stream of small calls that was ~20 % of the gateway's and ~10 % of the metadata
  // service's CPU per call (latency.ts, docs/benchmarks.md round 7; no change measurable in
  // one `ctr run --rm`, whose calls are each few). Without it the only names that change are
  // those esbuild renames to keep the bundle's scope flat (NatsError2, ...); nothing here
  // reads a class name (ContainerdError sets its .name; the class of an error is its
  // errorClass).
  keepNames: false,
  tsconfig: path.join(root, 'tsconfig.base.json'),
  // An app's title is set before any bundled module runs (runApp sets it again), so ps and
  // the launcher see flotilla-<app> from the start, not only after heavy imports load.
  banner: {
    js: [
      "import { createRequire as __flotillaRequire } from 'node:module'; const require = __flotillaRequire(import.meta.url);",
      "{ const m = /\\/apps\\/([^/]+)\\/main\\.js$/.exec(import.meta.url); if (m) process.title = 'flotilla-' + m[1]; }",
    ].join('\n'),
  },
  define: { 'process.env.FLOTILLA_REVISION': JSON.stringify(revision) },
  logLevel: 'warning',
});
// The bundles are ES modules named .js: say so, or node re-parses each one with a warning.
fs.writeFileSync(path.join(root, 'dist', 'package.json'), JSON.stringify({ type: 'module', private: true }) + '\n');
console.log(`built ${apps.length} apps (${apps.join(', ')}) and the launcher into dist/ in ${Date.now() - started} ms`);

if (process.argv.includes('--typecheck')) {
  try {
    execFileSync(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json', '--noEmit'], { cwd: root, stdio: 'inherit' });
  } catch {
    console.error('typecheck failed');
    process.exit(1);
  }
}
