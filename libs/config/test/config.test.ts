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
