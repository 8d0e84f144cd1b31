// containerd's own snapshotter conformance suite (snapshots/testsuite from Debian's
// containerd 1.6.20 sources), compiled with the containerd Go client and driven through a
// flotilla gateway for both snapshotters. The harness (tools/gotest/src/flotilla/snapshots)
// gives each case a namespace of its own, derived from this test's title.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { buildGoTest, runGoTest, startStack, testNamespace } from '@flotilla/testing';

test('containerd snapshotter testsuite passes for overlayfs and native through the gateway', { timeout: 20 * 60_000 }, async () => {
  const bin = await buildGoTest('snapshots');
  const stack = await startStack();
  try {
    const r = await runGoTest(bin, [], { FLOTILLA_ADDRESS: stack.socket, FLOTILLA_NS_PREFIX: testNamespace('snapshots-suite') }, 12 * 60_000);
    const failed = r.failed.filter((n) => n.includes('/'));
    assert.deepEqual(failed, [], `failing cases: ${failed.join(', ')}\n${r.output.slice(-8000)}`);
    assert.equal(r.code, 0, r.output.slice(-8000));
    for (const sn of ['TestOverlayfs', 'TestNative']) {
      const cases = r.passed.filter((n) => n.startsWith(`${sn}/`));
      // 21 cases; Rename is skipped by the suite itself on every overlay-capable kernel (issues.go).
      assert.equal(cases.length, 20, `${sn}: only ${cases.length} cases passed: ${cases.join(', ')}`);
      assert.ok(r.passed.includes(sn), `${sn} did not pass`);
      for (const must of ['Basic', 'Walk', 'Update', 'Remove', 'ViewReadonly', '128LayersMount', 'RemoveIntermediateSnapshot']) {
        assert.ok(cases.includes(`${sn}/${must}`), `${sn}/${must} did not pass`);
      }
      const skipped = r.skipped.filter((n) => n.startsWith(`${sn}/`));
      assert.deepEqual(skipped, [`${sn}/Rename`], `unexpected skips for ${sn}`);
    }
    // Each case removes its snapshots when done: no snapshot data is left on the node (a
    // removed snapshot's data is deleted just after its Remove answers, so allow a moment).
    for (const sn of ['overlayfs', 'native']) {
      const dir = path.join(stack.home, 'state', 'snapshotter', sn, 'snapshots');
      let left = await fs.readdir(dir);
      for (let i = 0; i < 50 && left.length > 0 && left.every((d) => d.startsWith('rm-')); i++) {
        await new Promise((r) => setTimeout(r, 100));
        left = await fs.readdir(dir);
      }
      assert.deepEqual(left, [], `${sn} data left behind`);
    }
  } finally {
    await stack.stop();
  }
});
