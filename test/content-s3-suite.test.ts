// containerd's content conformance suite (as in content-suite.test.ts) against a stack
// whose content service keeps blobs and ingests in S3 (s3rver through startS3), and a
// blob checked in the bucket itself: stored once under blobs/sha256/<hex>, no ingest
// objects left after the cases clean up.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Client } from 'minio';
import { buildGoTest, runGoTest, startS3, startStack, testNamespace } from '@flotilla/testing';

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
  'TestContentLeases',
];

async function keys(client: Client, bucket: string, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of client.listObjectsV2(bucket, prefix, true) as AsyncIterable<{ name?: string }>) if (o.name) out.push(o.name);
  return out.sort();
}

test('containerd content testsuite passes every case through the gateway (S3 backend)', { timeout: 15 * 60_000 }, async (t) => {
  const bin = await buildGoTest('content');
  const s3 = await startS3();
  const stack = await startStack({ env: { ...s3.env, FLOTILLA_S3_PREFIX: 'suite' } }).catch(async (err) => {
    await s3.stop();
    throw err;
  });
  const client = new Client({ endPoint: '127.0.0.1', port: Number(new URL(s3.endpoint).port), useSSL: false, accessKey: s3.accessKey, secretKey: s3.secretKey, region: s3.region, pathStyle: true });
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
    // The service really used the bucket: every case aborted or committed its ingests.
    assert.deepEqual(await keys(client, s3.bucket, 'suite/ingest/'), []);

    // A blob written through the real ctr lands in the bucket under its digest, once,
    // and reads back whole and by range.
    const ns = testNamespace(t.name + ' ctr');
    const data = randomBytes(9 * 1024 * 1024 + 7);
    const dgst = 'sha256:' + createHash('sha256').update(data).digest('hex');
    const ingest = await stack.ctr(['content', 'ingest', '--expected-digest', dgst, '--expected-size', String(data.length), 'big'], { namespace: ns, input: data });
    assert.equal(ingest.code, 0, ingest.stderr);
    const stat = await client.statObject(s3.bucket, `suite/blobs/sha256/${dgst.slice(7)}`);
    assert.equal(stat.size, data.length);
    const got = await stack.ctr(['content', 'get', dgst], { namespace: ns });
    assert.equal(got.code, 0, got.stderr);
    assert.ok(got.stdoutBytes.equals(data), `ctr content get: ${got.stdoutBytes.length} bytes back`);
    const rm = await stack.ctr(['content', 'rm', dgst], { namespace: ns });
    assert.equal(rm.code, 0, rm.stderr);
    await assert.rejects(client.statObject(s3.bucket, `suite/blobs/sha256/${dgst.slice(7)}`), (e: { code?: string }) => e.code === 'NotFound');
  } finally {
    await stack.stop();
    await s3.stop();
  }
});
