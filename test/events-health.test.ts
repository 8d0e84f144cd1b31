// grpc.health.v1 Check on the gateway answers truthfully: SERVING while its NATS connection
// is up, NOT_SERVING while NATS is down, SERVING again once it is back (dockerd resubscribes
// to events on that transition).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { startLoneGateway, type LoneGateway } from '@flotilla/testing';

let gw: LoneGateway;

const id = (b: Buffer) => b;

/** Check(service) -> status (1 SERVING, 2 NOT_SERVING), hand-decoded from the one-field reply. */
function check(service = ''): Promise<number> {
  const req = service ? Buffer.concat([Buffer.from([0x0a, service.length]), Buffer.from(service)]) : Buffer.alloc(0);
  return new Promise((resolve, reject) =>
    gw.client.makeUnaryRequest('/grpc.health.v1.Health/Check', id, id, req, { deadline: Date.now() + 5000 }, (err, res) => {
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
  gw = await startLoneGateway('health');
});

after(async () => {
  await gw?.stop();
});

test('health follows the NATS connection', async () => {
  assert.equal(await check(), 1);
  assert.equal(await check('containerd'), 1);
  await gw.restartNats(() => until('NOT_SERVING while NATS is down', async () => (await check()) === 2));
  await until('SERVING once NATS is back', async () => (await check()) === 1);
});

test('an unknown service is NotFound', async () => {
  await assert.rejects(check('no.such.Service'), (err: grpc.ServiceError) => err.code === grpc.status.NOT_FOUND);
});
