// Layers that try to write outside the root they are applied to (the cases of
// containerd's TestBreakouts, restated): each is applied into <tmp>/root next to a
// sentinel in <tmp>, which must stay as it was; most also check where things landed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { applyLayer, rootPath } from '@flotilla/archive';
import { isInvalidArgument } from '@flotilla/errdefs';
import { dir, file, link, symlink, streamOf, tarOf, TAR, type TarEntry } from './tarfix.js';

type Check = (root: string) => Promise<void>;

const unbroken: Check = async (root) => assert.equal(await fs.readFile(path.join(root, 'etc/unbroken'), 'utf8'), 'unbroken');

const sameFile = (a: string, b: string): Check => async (root) => {
  const [sa, sb] = [await fs.stat(await rootPath(root, a)), await fs.stat(await rootPath(root, b))];
  assert.equal(sa.ino, sb.ino, `${a} and ${b} should be one inode`);
};
const notSameFile = (a: string, b: string): Check => async (root) => {
  const [sa, sb] = [await fs.stat(await rootPath(root, a)), await fs.stat(await rootPath(root, b))];
  assert.notEqual(sa.ino, sb.ino, `${a} and ${b} should differ`);
};
const sameSymlink = (a: string, b: string): Check => async (root) => {
  assert.ok((await fs.lstat(path.join(root, a))).isSymbolicLink());
  assert.ok((await fs.lstat(path.join(root, b))).isSymbolicLink());
  assert.equal(await fs.readlink(path.join(root, a)), await fs.readlink(path.join(root, b)));
};
const content = (f: string, want: string): Check => async (root) => assert.equal(await fs.readFile(path.join(root, f), 'utf8'), want);
const missing = (f: string): Check => async (root) => {
  await assert.rejects(fs.lstat(path.join(root, f)), { code: 'ENOENT' });
};
const all = (...cs: Check[]): Check => async (root) => {
  for (const c of cs) await c(root);
};

/** Sets up a root beforehand, as fstest.Apply does in containerd's table. */
type Setup = (root: string) => Promise<void>;
const mk = {
  dir: (p: string): Setup => (root) => fs.mkdir(path.join(root, p), { recursive: true }).then(() => {}),
  file: (p: string, c: string): Setup => (root) => fs.writeFile(path.join(root, p), c),
  symlink: (target: string, p: string): Setup => (root) => fs.symlink(target, path.join(root, p)),
  link: (target: string, p: string): Setup => async (root) => fs.link(await rootPath(root, target), await rootPath(root, p)),
};

interface Case {
  name: string;
  setup?: Setup[];
  entries: (outside: string) => TarEntry[];
  check?: Check;
  /** Refused as an invalid archive. */
  invalid?: boolean;
  /** Fails (the resolved target does not exist inside the root), whatever the class. */
  fails?: boolean;
}

const cases: Case[] = [
  { name: 'SymlinkAbsolute', entries: () => [dir('etc'), symlink('/etc', 'localetc'), file('/localetc/unbroken', 'unbroken')], check: unbroken },
  { name: 'SymlinkUpAndOut', entries: () => [dir('etc'), dir('dummy'), symlink('/dummy/../etc', 'localetc'), file('/localetc/unbroken', 'unbroken')], check: unbroken },
  { name: 'SymlinkMultipleAbsolute', entries: () => [dir('etc'), dir('dummy'), symlink('/etc', '/dummy/etc'), symlink('/dummy/etc', 'localetc'), file('/dummy/etc/unbroken', 'unbroken')], check: unbroken },
  { name: 'SymlinkMultipleRelative', entries: () => [dir('etc'), dir('dummy'), symlink('/etc', '/dummy/etc'), symlink('./dummy/etc', 'localetc'), file('/dummy/etc/unbroken', 'unbroken')], check: unbroken },
  { name: 'SymlinkEmptyFile', entries: () => [dir('etc'), file('etc/emptied', 'notempty'), symlink('/etc', 'localetc'), file('/localetc/emptied', '')], check: content('etc/emptied', '') },
  { name: 'HardlinkRelative', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), dir('breakouts'), symlink('../../etc', 'breakouts/d1'), link('/breakouts/d1/passwd', 'breakouts/mypasswd')], check: sameFile('/breakouts/mypasswd', '/etc/passwd') },
  { name: 'HardlinkDownAndOut', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), dir('breakouts'), dir('downandout'), symlink('../downandout/../../etc', 'breakouts/d1'), link('/breakouts/d1/passwd', 'breakouts/mypasswd')], check: sameFile('/breakouts/mypasswd', '/etc/passwd') },
  { name: 'HardlinkAbsolute', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), symlink('/etc', 'localetc'), link('/localetc/passwd', 'localpasswd')], check: sameFile('localpasswd', '/etc/passwd') },
  { name: 'HardlinkRelativeLong', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), symlink('../../../../../../../etc', 'localetc'), link('/localetc/passwd', 'localpasswd')], check: sameFile('localpasswd', '/etc/passwd') },
  { name: 'HardlinkRelativeUpAndOut', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), symlink('upandout/../../../etc', 'localetc'), link('/localetc/passwd', 'localpasswd')], check: sameFile('localpasswd', '/etc/passwd') },
  { name: 'HardlinkDirectRelative', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), link('../../../../../etc/passwd', 'localpasswd')], check: sameFile('localpasswd', '/etc/passwd') },
  { name: 'HardlinkDirectAbsolute', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), link('/etc/passwd', 'localpasswd')], check: sameFile('localpasswd', '/etc/passwd') },
  { name: 'HardlinkSymlinkBeforeCreateTarget', entries: () => [dir('etc', 0o770), symlink('/etc/passwd', 'localpasswd'), link('localpasswd', 'localpasswd-dup'), file('/etc/passwd', 'after')], check: sameFile('localpasswd-dup', '/etc/passwd') },
  { name: 'HardlinkSymlinkRelative', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), symlink('../../../../../etc/passwd', 'passwdlink'), link('/passwdlink', 'localpasswd')], check: all(sameSymlink('/localpasswd', '/passwdlink'), sameFile('/localpasswd', '/etc/passwd')) },
  { name: 'HardlinkSymlinkAbsolute', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), symlink('/etc/passwd', 'passwdlink'), link('/passwdlink', 'localpasswd')], check: all(sameSymlink('/localpasswd', '/passwdlink'), sameFile('/localpasswd', '/etc/passwd')) },
  { name: 'SymlinkParentDirectory', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), symlink('/etc/', '..'), link('/etc/passwd', 'localpasswd')], check: sameFile('/localpasswd', '/etc/passwd') },
  { name: 'SymlinkEmptyFilename', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), symlink('/etc/', ''), link('/etc/passwd', 'localpasswd')], check: sameFile('/localpasswd', '/etc/passwd') },
  { name: 'SymlinkParentRelative', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), symlink('/etc/', 'localetc/sub/..'), link('/etc/passwd', '/localetc/localpasswd')], check: sameFile('/localetc/localpasswd', '/etc/passwd') },
  { name: 'SymlinkSlashEnded', entries: () => [dir('etc', 0o770), file('/etc/passwd', 'inside'), dir('localetc/', 0o770), link('/etc/passwd', '/localetc/localpasswd')], check: sameFile('/localetc/localpasswd', '/etc/passwd') },
  { name: 'SymlinkOverrideDirectory', setup: [mk.dir('etc'), mk.file('etc/passwd', 'inside'), mk.dir('localetc')], entries: () => [symlink('/etc', 'localetc'), link('/etc/passwd', '/localetc/localpasswd')], check: sameFile('/localetc/localpasswd', '/etc/passwd') },
  { name: 'SymlinkOverrideDirectoryRelative', setup: [mk.dir('etc'), mk.file('etc/passwd', 'inside'), mk.dir('localetc')], entries: () => [symlink('../../etc', 'localetc'), link('/etc/passwd', '/localetc/localpasswd')], check: sameFile('/localetc/localpasswd', '/etc/passwd') },
  { name: 'DirectoryOverrideSymlink', setup: [mk.dir('etc'), mk.file('etc/passwd', 'inside'), mk.symlink('/etc', 'localetc')], entries: () => [dir('/localetc/'), link('/etc/passwd', '/localetc/localpasswd')], check: sameFile('/localetc/localpasswd', '/etc/passwd') },
  { name: 'DirectoryOverrideSymlinkAndHardlink', setup: [mk.dir('etc'), mk.file('etc/passwd', 'inside'), mk.symlink('etc', 'localetc'), mk.link('/etc/passwd', '/localetc/localpasswd')], entries: () => [dir('/localetc/'), file('/localetc/localpasswd', 'different')], check: notSameFile('/localetc/localpasswd', '/etc/passwd') },
  { name: 'WhiteoutRootParent', setup: [mk.dir('etc'), mk.file('etc/passwd', 'inside')], entries: () => [file('.wh...', '')], invalid: true },
  { name: 'WhiteoutParent', setup: [mk.dir('etc'), mk.file('etc/passwd', 'inside')], entries: () => [file('etc/.wh...', '')], invalid: true },
  { name: 'WhiteoutRoot', setup: [mk.dir('etc'), mk.file('etc/passwd', 'inside')], entries: () => [file('.wh..', '')], invalid: true },
  { name: 'WhiteoutCurrentDirectory', setup: [mk.dir('etc'), mk.file('etc/passwd', 'inside')], entries: () => [file('etc/.wh..', '')], invalid: true },
  { name: 'WhiteoutSymlink', setup: [mk.dir('etc'), mk.file('etc/passwd', 'all users'), mk.symlink('/etc', 'localetc')], entries: () => [file('.wh.localetc', '')], check: all(content('etc/passwd', 'all users'), missing('localetc')) },
  { name: 'WhiteoutSymlinkPath', setup: [mk.dir('etc'), mk.file('etc/passwd', 'all users'), mk.file('etc/whitedout', 'ahhhh whiteout'), mk.symlink('/etc', 'localetc')], entries: () => [file('localetc/.wh.whitedout', '')], check: all(content('etc/passwd', 'all users'), missing('etc/whitedout')) },
  { name: 'WhiteoutDirectoryName', setup: [mk.dir('etc'), mk.file('etc/passwd', 'all users'), mk.file('etc/whitedout', 'ahhhh whiteout'), mk.symlink('/etc', 'localetc')], entries: () => [file('.wh.etc/somefile', 'non-empty')], check: all(content('etc/passwd', 'all users'), content('.wh.etc/somefile', 'non-empty')) },
  { name: 'WhiteoutDeadSymlinkParent', setup: [mk.dir('etc'), mk.file('etc/passwd', 'all users'), mk.symlink('/dne', 'localetc')], entries: () => [file('localetc/.wh.etc', '')], check: content('etc/passwd', 'all users') },
  { name: 'WhiteoutRelativePath', setup: [mk.dir('etc'), mk.file('etc/passwd', 'all users'), mk.symlink('/dne', 'localetc')], entries: () => [file('dne/../.wh.etc', '')], check: missing('etc/passwd') },
  {
    // A hardlink to a symlink pointing outside: chmod must not follow it to the outside file.
    name: 'HardlinkSymlinkChmod',
    entries: (outside) => [symlink(path.join(outside, 'perm400'), path.join(outside, 'also-exists-outside-root')), link(path.join(outside, 'also-exists-outside-root'), 'sketchylink')],
  },
  // Beyond containerd's table: plain ".." names and absolute names stay inside.
  { name: 'DotDotFileName', entries: () => [file('../../sentinel', 'overwritten'), file('a/../../../sentinel', 'overwritten')], check: content('sentinel', 'overwritten') },
  { name: 'SymlinkToOutsideThenWriteThrough', entries: (outside) => [symlink(outside, 'out'), file('out/sentinel', 'overwritten')], check: async (root) => content(path.join(await rootPath(root, 'out'), 'sentinel').slice(root.length), 'overwritten')(root) },
  { name: 'WhiteoutThroughOutsideSymlink', entries: (outside) => [symlink(outside, 'out'), file('out/.wh.sentinel', '')] },
  { name: 'HardlinkToOutsideAbsolutePath', entries: (outside) => [link(path.join(outside, 'sentinel'), 'grab')], fails: true },
];

for (const c of cases) {
  test(`breakout: ${c.name}`, async () => {
    const td = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-breakout-'));
    try {
      const sentinel = path.join(td, 'sentinel');
      await fs.writeFile(sentinel, 'untouched', { mode: 0o400 });
      await fs.chmod(sentinel, 0o400);
      await fs.writeFile(path.join(td, 'perm400'), '...', { mode: 0o400 });
      await fs.chmod(path.join(td, 'perm400'), 0o400);
      await fs.writeFile(path.join(td, 'also-exists-outside-root'), '...', { mode: 0o640 });
      const root = path.join(td, 'root');
      await fs.mkdir(root);
      for (const s of c.setup ?? []) await s(root);
      const layer = await tarOf(...c.entries(td));
      const applying = applyLayer(root, streamOf(layer), { mediaType: TAR, whiteouts: 'native' });
      if (c.invalid) await assert.rejects(applying, (err) => isInvalidArgument(err));
      else if (c.fails) await assert.rejects(applying, /grab/);
      else await applying;
      // Outside the root nothing changed: same files, same content, same modes.
      assert.deepEqual((await fs.readdir(td)).sort(), ['also-exists-outside-root', 'perm400', 'root', 'sentinel']);
      assert.equal(await fs.readFile(sentinel, 'utf8'), 'untouched');
      assert.equal((await fs.stat(sentinel)).mode & 0o7777, 0o400);
      assert.equal((await fs.stat(path.join(td, 'perm400'))).mode & 0o7777, 0o400);
      assert.equal((await fs.stat(path.join(td, 'also-exists-outside-root'))).mode & 0o7777, 0o640);
      if (c.check) await c.check(root);
    } finally {
      await fs.rm(td, { recursive: true, force: true });
    }
  });
}
