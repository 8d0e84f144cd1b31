// @flotilla/db: the Postgres.js pool, versioned migrations, SQLSTATE helpers.
export { connectDb, migrate, sqlState, UNIQUE_VIOLATION, FOREIGN_KEY_VIOLATION } from './db.js';
export type { Sql } from './db.js';
// Rows in PostgreSQL's binary format (COPY), for large bytea-heavy reads.
export { selectBinary, parseCopy, literal, timestamptzMs } from './copy.js';
export type { BinaryRow } from './copy.js';
