// A gateway alone on a lone nats-server, with a grpc-js client on its socket: for tests of
// what the gateway answers by itself (health, events Subscribe), with no service running.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Bus } from '@flotilla/bus';
import { Gateway } from '@flotilla/gateway';
import { startNats, type TestNats } from './nats.js';

export interface LoneGateway {
  bus: Bus;
  gateway: Gateway;
  client: grpc.Client;
  /** The nats-server now running (a new one after restartNats). */
  readonly nats: TestNats;
  /** Stops nats-server, runs `during` while it is down, and starts it again on its port. */
  restartNats(during?: () => Promise<void>): Promise<void>;
  stop(): Promise<void>;
}

export async function startLoneGateway(name: string): Promise<LoneGateway> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `flotilla-${name}-`));
  let nats = await startNats();
  const bus = await Bus.connect({ url: nats.url, name });
  const socket = path.join(dir, 'gw.sock');
  const gateway = new Gateway({ bus, socket, nodeId: `${name}-node`, stateDir: path.join(dir, 'gw'), version: 'test', revision: 'test' });
  await gateway.start();
  const client = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure());
  return {
    bus,
    gateway,
    client,
    get nats() {
      return nats;
    },
    async restartNats(during) {
      const port = nats.port;
      await nats.stop();
      await during?.();
      nats = await startNats({ port });
    },
    async stop() {
      client.close();
      await gateway.stop();
      await bus.close().catch(() => {});
      await nats.stop().catch(() => {});
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
