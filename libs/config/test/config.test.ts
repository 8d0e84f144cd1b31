import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig, ConfigError } from '@flotilla/config';

test('FLOTILLA_HOME puts everything under one directory', () => {
  const c = loadConfig({ FLOTILLA_HOME: '/tmp/fh', FLOTILLA_NODE_ID: 'n1' });
  assert.equal(c.socket, '/tmp/fh/containerd.sock');
  assert.ok(c.stateDir.startsWith('/tmp/fh/'));
  assert.ok(c.runDir.startsWith('/tmp/fh/'));
  assert.ok(c.logDir.startsWith('/tmp/fh/'));
  assert.equal(c.nodeId, 'n1');
});

test('system layout without FLOTILLA_HOME', () => {
  const c = loadConfig({});
  assert.equal(c.socket, '/run/flotilla/containerd.sock');
  assert.equal(c.stateDir, '/var/lib/flotilla');
});

test('invalid values are refused with the variable named', () => {
  assert.throws(() => loadConfig({ FLOTILLA_NODE_ID: 'a.b' }), (e: Error) => e instanceof ConfigError && /FLOTILLA_NODE_ID/.test(e.message));
  assert.throws(() => loadConfig({ FLOTILLA_MAX_PAYLOAD: '12' }), /FLOTILLA_MAX_PAYLOAD/);
});

test('content backend: local by default, s3 with its variables validated', () => {
  assert.deepEqual(loadConfig({}).content, { backend: 'local' });
  const s3 = {
    FLOTILLA_CONTENT_BACKEND: 's3',
    FLOTILLA_S3_ENDPOINT: 'http://minio.local:9000/',
    FLOTILLA_S3_BUCKET: 'blobs',
    FLOTILLA_S3_ACCESS_KEY: 'ak',
    FLOTILLA_S3_SECRET_KEY: 'sk',
    FLOTILLA_S3_PREFIX: 'cluster-a',
  };
  assert.deepEqual(loadConfig(s3).content, {
    backend: 's3',
    endpoint: 'http://minio.local:9000',
    bucket: 'blobs',
    accessKey: 'ak',
    secretKey: 'sk',
    region: 'us-east-1',
    prefix: 'cluster-a/',
    partSize: 8 * 1024 * 1024,
  });
  assert.throws(() => loadConfig({ FLOTILLA_CONTENT_BACKEND: 'gcs' }), /FLOTILLA_CONTENT_BACKEND=gcs/);
  assert.throws(() => loadConfig({ ...s3, FLOTILLA_S3_ENDPOINT: 'minio:9000' }), /FLOTILLA_S3_ENDPOINT/);
  assert.throws(() => loadConfig({ ...s3, FLOTILLA_S3_ENDPOINT: '' }), /FLOTILLA_S3_ENDPOINT/);
  assert.throws(() => loadConfig({ ...s3, FLOTILLA_S3_BUCKET: 'Bad_Bucket' }), /FLOTILLA_S3_BUCKET/);
  assert.throws(() => loadConfig({ ...s3, FLOTILLA_S3_SECRET_KEY: '' }), /FLOTILLA_S3_SECRET_KEY/);
  assert.throws(() => loadConfig({ ...s3, FLOTILLA_S3_PART_SIZE: '1024' }), /FLOTILLA_S3_PART_SIZE/);
});
