// Prepare and View under a lease, against a real PostgreSQL: the lease resource is recorded
// while the snapshot is prepared, but the snapshot is written only once that succeeded; a
// missing lease fails with its own error and leaves nothing; a failed create releases the
// resource again.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { migrate } from '@flotilla/db';
import { errNotFound, isAlreadyExists, isNotFound } from '@flotilla/errdefs';
import { Snapshotter, SnapshotService, snapshotMigrations } from '@flotilla/snapshots';
import { startPg, type TestPg } from './pg.js';

let pg: TestPg;
let root: string;
let sn: Snapshotter;
/** What the fake leases service saw, in order. */
let calls: string[];
/** How the next addLeaseResource ends: after it resolves `gate`. */
let addOutcome: 'ok' | 'missing';
let gate: Promise<void>;
let openGate: () => void;

function armGate(): void {
  gate = new Promise((r) => (openGate = r));
}

let service: SnapshotService;

before(async () => {
  pg = await startPg();
  await migrate(pg.sql, 'snapshots', snapshotMigrations);
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-snap-lease-'));
  sn = new Snapshotter({ sql: pg.sql, nodeId: 'n1', name: 'overlayfs', root });
  service = new SnapshotService(new Map([['overlayfs', sn]]), () => {}, {
    async addLeaseResource(ns, lease, _s, key) {
      calls.push(`add ${lease} ${key}`);
      await gate;
      // The snapshot must not exist yet while its lease resource is being recorded.
      calls.push(`exists-during-add ${await sn.stat(ns, key).then(() => true, () => false)}`);
      if (addOutcome === 'missing') throw errNotFound(`lease "${lease}"`);
    },
    async removeLeaseResource(_ns, lease, _s, key) {
      calls.push(`remove ${lease} ${key}`);
    },
  });
});

after(async () => {
  await pg?.stop();
  if (root) await fs.rm(root, { recursive: true, force: true });
});

const ctx = (lease: string) => ({ namespace: 'ns1', lease });
const leftovers = async () => (await fs.readdir(path.join(root, 'snapshots'))).filter((e) => e.startsWith('new-'));

test('the snapshot is written only after its lease resource is recorded', async () => {
  calls = [];
  addOutcome = 'ok';
  armGate();
  const p = service.prepare({ snapshotter: 'overlayfs', key: 'k1', parent: '', labels: {} }, ctx('l1'));
  await new Promise((r) => setTimeout(r, 100)); // prepare runs as far as it may meanwhile
  await assert.rejects(sn.stat('ns1', 'k1'), isNotFound);
  openGate();
  const r = await p;
  assert.equal(r.mounts.length, 1);
  assert.deepEqual(calls, ['add l1 k1', 'exists-during-add false']);
  assert.equal((await sn.stat('ns1', 'k1')).kind, 'active');
});

test('a missing lease fails with its NotFound, before the snapshot\'s own errors, and leaves nothing', async () => {
  calls = [];
  addOutcome = 'missing';
  armGate();
  openGate();
  // Even for a key that exists (AlreadyExists otherwise), the lease's error comes first.
  await assert.rejects(service.prepare({ snapshotter: 'overlayfs', key: 'k1', parent: '', labels: {} }, ctx('gone')), (e: Error) => isNotFound(e) && /lease "gone"/.test(e.message));
  await assert.rejects(service.view({ snapshotter: 'overlayfs', key: 'v-new', parent: '', labels: {} }, ctx('gone')), (e: Error) => isNotFound(e) && /lease "gone"/.test(e.message));
  await assert.rejects(sn.stat('ns1', 'v-new'), isNotFound);
  assert.deepEqual(await leftovers(), []);
  assert.ok(!calls.some((c) => c.startsWith('remove')), 'nothing to release');
});

test('a create that fails after the lease resource was recorded releases it', async () => {
  calls = [];
  addOutcome = 'ok';
  armGate();
  openGate();
  await assert.rejects(service.prepare({ snapshotter: 'overlayfs', key: 'k1', parent: '', labels: {} }, ctx('l2')), isAlreadyExists);
  assert.deepEqual(calls, ['add l2 k1', 'exists-during-add true', 'remove l2 k1']);
  assert.deepEqual(await leftovers(), []);
});
