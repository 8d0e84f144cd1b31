// PostgreSQL access through Postgres.js. Each service owns its tables and its ordered list
// of migrations; `migrate` applies the missing ones at start-up under an advisory lock so
// several replicas starting together apply each migration exactly once.
import postgres from 'postgres';
import { pgSocket } from './socket.js';

export type Sql = postgres.Sql<{}>;

/**
 * Opens a pool. Besides host:port URLs, libpq's unix-socket form is accepted, as psql
 * accepts it: `postgres://user@/db?host=/socket/dir&port=5432`. `ownSocket: false` keeps
 * Postgres.js's own sockets (for comparison: see socket.ts).
 */
export function connectDb(url: string, opts: { max?: number; appName?: string; ownSocket?: boolean } = {}): Sql {
  // WHATWG URL refuses userinfo without a host; a socket URL has none, so name one for parsing.
  const u = new URL(url.replace(/^(postgres(?:ql)?:\/\/(?:[^/?#@]*@)?)\//, '$1localhost/'));
  const sockDir = u.searchParams.get('host');
  let socketPath: string | undefined;
  if (sockDir?.startsWith('/')) {
    socketPath = `${sockDir}/.s.PGSQL.${u.searchParams.get('port') || u.port || '5432'}`;
    u.searchParams.delete('host');
    u.searchParams.delete('port');
    url = u.toString();
  }
  // Our own socket (socket.ts) unless TLS may be asked for or several hosts are named.
  const ssl = u.searchParams.get('sslmode') ?? u.searchParams.get('ssl') ?? process.env.PGSSLMODE ?? process.env.PGSSL;
  const plain = (!ssl || ssl === 'disable' || ssl === 'false') && !u.host.includes(',');
  return postgres(url, {
    ...(socketPath ? { path: socketPath } : {}),
    ...(plain && opts.ownSocket !== false ? { socket: (o: { path?: string | false; host: string[]; port: number[] }) => pgSocket(o.path ? { path: o.path } : { host: o.host[0]!.replace(/^\[(.*)\]$/, '$1'), port: o.port[0]! }) } : {}),
    max: opts.max ?? 10,
    onnotice: () => {},
    connection: { application_name: opts.appName ?? 'flotilla' },
    transform: { undefined: null },
  });
}

/**
 * Applies `migrations[i]` as version i+1 for `owner` unless already recorded.
 * Each migration runs in its own transaction together with its bookkeeping row.
 */
export async function migrate(sql: Sql, owner: string, migrations: readonly string[]): Promise<number> {
  await sql`CREATE TABLE IF NOT EXISTS flotilla_migrations (
    owner text NOT NULL, version int NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, version))`.catch((err) => {
    // Two processes racing on CREATE TABLE IF NOT EXISTS can collide on the catalog.
    if (err?.code !== '23505' && err?.code !== '42P07') throw err;
  });
  let applied = 0;
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(hashtext(${'flotilla-migrate:' + owner}))`;
    const rows = await tx`SELECT version FROM flotilla_migrations WHERE owner = ${owner}`;
    const done = new Set(rows.map((r) => r.version as number));
    for (let i = 0; i < migrations.length; i++) {
      if (done.has(i + 1)) continue;
      await tx.unsafe(migrations[i]!);
      await tx`INSERT INTO flotilla_migrations (owner, version) VALUES (${owner}, ${i + 1})`;
      applied++;
    }
  });
  return applied;
}

/** SQLSTATE of a Postgres.js error, if it is one. */
export function sqlState(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

export const UNIQUE_VIOLATION = '23505';
export const FOREIGN_KEY_VIOLATION = '23503';
