// containerd's own content conformance suite (content/testsuite from Debian's
// golang-github-containerd-containerd-dev), driven through the gateway by the containerd
// Go client exactly as containerd's integration tests drive a daemon: every case in its
// own namespace and under its own lease (tools/gotest/src/flotilla/content).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildGoTest, runGoTest, startStack, testNamespace } from '@flotilla/testing';

// The cases of ContentSuite and ContentCrossNSSharedSuite in containerd 1.6.20, and ours.
const CASES = [
  'TestContentSuite/Writer',
  'TestContentSuite/UpdateStatus',
  'TestContentSuite/CommitExists',
  'TestContentSuite/Resume',
  'TestContentSuite/ResumeTruncate',
  'TestContentSuite/ResumeDiscard',
  'TestContentSuite/ResumeCopy',
  'TestContentSuite/ResumeCopySeeker',
  'TestContentSuite/ResumeCopyReaderAt',
  'TestContentSuite/SmallBlob',
  'TestContentSuite/Labels',
  'TestContentSuite/CommitErrorState',
  'TestContentCrossNSShared/CrossNamespaceAppend',
  'TestContentCrossNSShared/CrossNamespaceShare',
  // Ours: lease resources recorded for ingests and content under containerd-lease.
  'TestContentLeases',
];

test('containerd content testsuite passes every case through the gateway (disk backend)', { timeout: 15 * 60_000 }, async (t) => {
  const bin = await buildGoTest('content');
  const stack = await startStack();
  try {
    const r = await runGoTest(bin, ['-test.run', '^TestContent'], {
      FLOTILLA_ADDRESS: stack.socket,
      FLOTILLA_NS_PREFIX: testNamespace(t.name).slice(0, 24).replace(/-+$/, ''),
    });
    const missing = CASES.filter((c) => !r.passed.includes(c));
    assert.deepEqual(
      { failed: r.failed, skipped: r.skipped, missing },
      { failed: [], skipped: [], missing: [] },
      `content testsuite: failed ${r.failed.join(', ') || '-'}; not passed ${missing.join(', ') || '-'}\n${r.output.slice(-6000)}`,
    );
    assert.equal(r.code, 0, r.output.slice(-6000));
    // Cases clean up after themselves (the suite fails a case whose cleanup fails); spot
    // check that through ctr on the first and the last namespace used.
    const nss = (await stack.ctr(['namespaces', 'ls', '-q'])).stdout.split('\n').filter((n) => n.includes('ContentClient'));
    assert.ok(nss.length >= CASES.length - 1, `namespaces used: ${nss.join(' ')}`);
    for (const ns of [nss[0]!, nss[nss.length - 1]!]) {
      const ls = await stack.ctr(['content', 'ls', '-q'], { namespace: ns });
      assert.equal(ls.code, 0, ls.stderr);
      assert.equal(ls.stdout, '', `content left in ${ns}`);
      const leases = await stack.ctr(['leases', 'ls', '-q'], { namespace: ns });
      assert.equal(leases.stdout, '', `leases left in ${ns}`);
    }
  } finally {
    await stack.stop();
  }
});
