import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventSubject, nodeSubject, serviceSubject, topicOfSubject, SubjectError } from '@flotilla/bus';

test('subjects', async (t) => {
  const cases: [string, () => string, string | null][] = [
    ['cluster service', () => serviceSubject('content', 'Info'), 'flotilla.v1.svc.content.Info'],
    ['node service', () => nodeSubject('node-1', 'snapshots', 'Prepare'), 'flotilla.v1.node.node-1.snapshots.Prepare'],
    ['event', () => eventSubject('/tasks/exit'), 'flotilla.v1.events.tasks.exit'],
    ['node id with a dot', () => nodeSubject('a.b', 'agent', 'Create'), null],
    ['node id wildcard', () => nodeSubject('*', 'agent', 'Create'), null],
    ['method wildcard', () => serviceSubject('content', '>'), null],
    ['topic without slash', () => eventSubject('tasks/exit'), null],
    ['topic with dot', () => eventSubject('/tasks.exit'), null],
    ['empty topic token', () => eventSubject('/tasks//exit'), null],
  ];
  for (const [name, fn, want] of cases) {
    await t.test(name, () => {
      if (want === null) assert.throws(fn, SubjectError);
      else assert.equal(fn(), want);
    });
  }
  assert.equal(topicOfSubject('flotilla.v1.events.images.create'), '/images/create');
});
