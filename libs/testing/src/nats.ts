// A throwaway nats-server for tests: its own temp dir and a port the server picks itself.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startNats as start } from '@flotilla/launcher';

export interface TestNats {
  /** `nats://127.0.0.1:<port>` */
  url: string;
  port: number;
  /** Stops the server and removes its temp dir. */
  stop(): Promise<void>;
}

export async function startNats(opts: { port?: number } = {}): Promise<TestNats> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-nats-'));
  try {
    const n = await start({ dir, port: opts.port });
    return {
      url: n.url,
      port: n.port,
      stop: async () => {
        await n.stop();
        await fs.rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true });
    throw err;
  }
}
