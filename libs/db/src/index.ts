// @flotilla/db: the Postgres.js pool, versioned migrations, SQLSTATE helpers.
export { connectDb, migrate, sqlState, UNIQUE_VIOLATION, FOREIGN_KEY_VIOLATION } from './db.js';
export type { Sql } from './db.js';
