// A throwaway PostgreSQL 15 cluster for tests: a temp dir, a unix socket only, no fsync.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startPostgres as start, type PostgresOptions } from '@flotilla/launcher';

export type { PostgresOptions };

export interface TestPostgres {
  /**
   * libpq's socket form, `postgres://postgres@/flotilla?host=<dir>&port=<port>`: psql and
   * `connectDb` (@flotilla/db) take it; plain `postgres(url)` does not, use `options`.
   */
  url: string;
  /** The socket directory. */
  host: string;
  port: number;
  database: string;
  /** For `postgres(options)` (Postgres.js). */
  options: PostgresOptions;
  /** Stops the server and removes the cluster. */
  stop(): Promise<void>;
}

/** Starts a fresh cluster with database `flotilla` (or `opts.database`). About 1-2 s. */
export async function startPostgres(opts: { database?: string } = {}): Promise<TestPostgres> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'flotilla-pg-'));
  // mkdtemp makes 0700; as root the server runs as `postgres` and must get through.
  await fs.chmod(dir, 0o755);
  try {
    const pg = await start({ dataDir: path.join(dir, 'data'), socketDir: path.join(dir, 'sock'), database: opts.database, durable: false });
    return {
      url: pg.url,
      host: pg.host,
      port: pg.port,
      database: pg.database,
      options: pg.options,
      stop: async () => {
        await pg.stop();
        await fs.rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true });
    throw err;
  }
}
