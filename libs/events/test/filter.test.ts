// Subscribe's filters over envelopes: namespace, topic and the event's own fields by their
// proto names, as containerd's generated Field methods expose them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evContainer, evTask, packAny, toTimestamp, type events as ev } from '@flotilla/api';
import { ErrorClass, classOf } from '@flotilla/errdefs';
import { envelopeFilter } from '@flotilla/events';

const exit: ev.Envelope = {
  timestamp: toTimestamp(),
  namespace: 'ns1',
  topic: '/tasks/exit',
  event: packAny('containerd.events.TaskExit', evTask.TaskExit, { containerId: 'c1', id: 'c1', pid: 42, exitStatus: 137, exitedAt: undefined }),
};
const update: ev.Envelope = {
  timestamp: toTimestamp(),
  namespace: 'ns2',
  topic: '/containers/update',
  event: packAny('containerd.events.ContainerUpdate', evContainer.ContainerUpdate, { id: 'c2', image: 'img', labels: { 'app.tier': 'web' }, snapshotKey: '' }),
};

test('no filters match everything', () => {
  assert.ok(envelopeFilter([])(exit));
  assert.ok(envelopeFilter([])(update));
});

test('topic, namespace and event fields', () => {
  const cases: [string[], boolean, boolean][] = [
    [['topic~="/tasks/"'], true, false],
    [['namespace==ns2'], false, true],
    [['topic~="/tasks/",namespace==ns1'], true, false],
    [['topic~="/tasks/",namespace==ns2'], false, false],
    [['namespace==ns1', 'namespace==ns2'], true, true],
    [['event.container_id==c1'], true, false],
    [['event.id==c2'], false, true],
    [['event.labels."app.tier"==web'], false, true],
    [['event.labels.app.tier==web'], false, true],
    [['event.pid==42'], false, false], // only string fields, as containerd's
    [['topic!="/tasks/exit"'], false, true],
  ];
  for (const [filters, onExit, onUpdate] of cases) {
    const f = envelopeFilter(filters);
    assert.equal(f(exit), onExit, `${filters.join(' | ')} on the exit`);
    assert.equal(f(update), onUpdate, `${filters.join(' | ')} on the update`);
  }
});

test('a malformed filter is InvalidArgument', () => {
  assert.throws(() => envelopeFilter(['topic=='])(exit), (err) => classOf(err) === ErrorClass.InvalidArgument);
});

test('an event of an unknown type has no fields, but its envelope does', () => {
  const odd: ev.Envelope = { ...exit, topic: '/custom/thing', event: { typeUrl: 'example.com/Thing', value: Buffer.from([1, 2, 3]) } };
  assert.equal(envelopeFilter(['event.id==c1'])(odd), false);
  assert.equal(envelopeFilter(['topic=="/custom/thing"'])(odd), true);
});
