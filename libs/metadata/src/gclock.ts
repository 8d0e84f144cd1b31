// The lock that makes garbage collection safe against concurrent writers. A collection
// holds it exclusively from the start of its mark until its sweep is done; every write
// that adds a reference to an existing object (image create/update, lease AddResource,
// container create/update) holds it shared for its transaction, as containerd's writers
// hold its metadata wlock for reading. Writes that create new objects need not take it:
// a collection never removes what was created or updated after its mark began.
import type postgres from 'postgres';
import type { Sql } from '@flotilla/db';

/** One advisory lock key for the whole database (hashtext is stable across servers). */
export const GC_LOCK_NAME = 'flotilla-gc';

type Tx = postgres.TransactionSql<{}>;

/** Runs `fn` in a transaction that holds the collection lock shared. */
export async function withGcReadLock<T>(sql: Sql, fn: (tx: Tx) => Promise<T>): Promise<T> {
  return sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock_shared(hashtext(${GC_LOCK_NAME}))`;
    return fn(tx);
  }) as Promise<T>;
}
