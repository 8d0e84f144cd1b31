import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorClass, classOf, errNotFound, grpcCodeOf, classOfGrpcCode, GrpcCode, isNotFound } from '@flotilla/errdefs';

test('wrapped messages read like containerd', () => {
  assert.equal(errNotFound('image "x"').message, 'image "x": not found');
});

test('classOf walks cause chains', () => {
  const inner = errNotFound('blob');
  const outer = new Error('while reading', { cause: inner });
  assert.equal(classOf(outer), ErrorClass.NotFound);
  assert.ok(isNotFound(outer));
  assert.equal(classOf(new Error('plain')), ErrorClass.Unknown);
});

test('every class round-trips through its gRPC code', () => {
  for (const cls of Object.values(ErrorClass)) {
    assert.equal(classOfGrpcCode(grpcCodeOf(cls)), cls);
  }
  assert.equal(classOfGrpcCode(GrpcCode.Internal), ErrorClass.Unknown);
});
