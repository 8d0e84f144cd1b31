import { test } from 'node:test';
import assert from 'node:assert/strict';
import { testNamespace } from '@flotilla/testing';

// containerd's identifiers rule for namespaces.
const VALID = /^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/;

test('testNamespace: valid, stable, distinct for distinct long titles', () => {
  const cases: [string, string][] = [
    ['run --rm prints hello', 'run-rm-prints-hello'],
    ['Images: import & list', 'images-import-list'],
    ['  __x__  ', 'x'],
    ['abc', 'abc'],
  ];
  for (const [title, want] of cases) assert.equal(testNamespace(title), want);
  const long1 = 'a very long test title that goes on and on about containers and snapshots and tasks 1';
  const long2 = 'a very long test title that goes on and on about containers and snapshots and tasks 2';
  for (const t of [long1, long2, '', '!!!', 'ünïcödé only', 'x'.repeat(200)]) {
    const ns = testNamespace(t);
    assert.match(ns, VALID, `${JSON.stringify(t)} -> ${ns}`);
    assert.ok(ns.length <= 76, ns);
    assert.equal(testNamespace(t), ns);
  }
  assert.notEqual(testNamespace(long1), testNamespace(long2));
  assert.notEqual(testNamespace(''), testNamespace('!!!'));
});
