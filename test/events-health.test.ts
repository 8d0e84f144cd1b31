// grpc.health.v1 Check on the gateway answers truthfully: SERVING while its NATS connection
// is up, NOT_SERVING while NATS is down, SERVING again once it is back (dockerd resubscribes
// to events on that transition).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Bus } from '@flotilla/bus';
import { Gateway } from '@flotilla/gateway';
import { startNats, type TestNats } from '@flotilla/testing';

let dir: string;
let nats: TestNats;
let bus: Bus;
let gw: Gateway;
let client: grpc.Client;

const id = (b: Buffer) => b;

/** Check(service) -> status (1 SERVING, 2 NOT_SERVING), hand-decoded from the one-field reply. */
function check(service = ''): Promise<number> {
  const req = service ? Buffer.concat([Buffer.from([0x0a, service.length]), Buffer.from(service)]) : Buffer.alloc(0);
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest('/grpc.health.v1.Health/Check', id, id, req, { deadline: Date.now() + 5000 }, (err, res) => {
      if (err) return reject(err);
      resolve(res && res.length >= 2 && res[0] === 0x08 ? res[1]! : 0);
    }),
  );
}

async function until(what: string, fn: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + 30_000;
  while (!(await fn().catch(() => false))) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-health-'));
  nats = await startNats();
  bus = await Bus.connect({ url: nats.url, name: 'health-test' });
  const socket = path.join(dir, 'gw.sock');
  gw = new Gateway({ bus, socket, nodeId: 'health-node', stateDir: path.join(dir, 'gw'), version: 'test', revision: 'test' });
  await gw.start();
  client = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure());
});

after(async () => {
  client?.close();
  await gw?.stop();
  await bus?.close().catch(() => {});
  await nats?.stop().catch(() => {});
  await fs.rm(dir, { recursive: true, force: true });
});

test('health follows the NATS connection', async () => {
  assert.equal(await check(), 1);
  assert.equal(await check('containerd'), 1);
  const port = nats.port;
  await nats.stop();
  await until('NOT_SERVING while NATS is down', async () => (await check()) === 2);
  nats = await startNats({ port });
  await until('SERVING once NATS is back', async () => (await check()) === 1);
});

test('an unknown service is NotFound', async () => {
  await assert.rejects(check('no.such.Service'), (err: grpc.ServiceError) => err.code === grpc.status.NOT_FOUND);
});
