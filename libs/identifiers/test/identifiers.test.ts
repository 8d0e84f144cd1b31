import { test } from 'node:test';
import assert from 'node:assert/strict';
import { namespaceRequired, validateIdentifier, validateLabels } from '@flotilla/identifiers';
import { ErrorClass, classOf } from '@flotilla/errdefs';

test('identifiers', () => {
  for (const ok of ['a', 'default', 'k8s.io', 'a-b_c.d', 'A1', 'x'.repeat(76)]) validateIdentifier(ok);
  for (const bad of ['', '-a', 'a-', 'a..b', 'a b', 'a/b', 'x'.repeat(77), 'ü']) {
    assert.throws(() => validateIdentifier(bad), (e) => classOf(e) === ErrorClass.InvalidArgument, bad);
  }
});

test('namespaces: missing is FailedPrecondition, malformed is InvalidArgument', () => {
  assert.equal(namespaceRequired({ namespace: 'default' }), 'default');
  assert.throws(() => namespaceRequired({}), (e) => classOf(e) === ErrorClass.FailedPrecondition);
  assert.throws(() => namespaceRequired({ namespace: 'no!' }), (e) => classOf(e) === ErrorClass.InvalidArgument && /namespace validation/.test((e as Error).message));
});

test('labels are bounded at 4096 bytes', () => {
  validateLabels({ k: 'v'.repeat(4095) });
  assert.throws(() => validateLabels({ k: 'v'.repeat(4096) }), (e) => classOf(e) === ErrorClass.InvalidArgument);
});
