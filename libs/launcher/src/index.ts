// @flotilla/launcher: starting nats-server, PostgreSQL and flotilla's apps; used by
// `npm start` (tools/launcher) and by the integration tests (@flotilla/testing), so both
// run the same thing.

// nats-server and a socket-only PostgreSQL cluster as child processes.
export { startNats, startPostgres, stopChild, freePort, PG_BIN } from './procs.js';
export type { Running, RunningNats, RunningPostgres, PostgresOptions, StartNatsOptions, StartPostgresOptions } from './procs.js';
// The eight apps, restarted when they exit, logging to <logDir>/<app>.log.
export { Supervisor, APPS, APP_ENV } from './supervisor.js';
export type { AppName, SupervisorOptions } from './supervisor.js';
// What a stopped stack's node agent left behind: tasks, shims, mounts.
export { cleanupTasks, shimPids, unmountUnder } from './cleanup.js';
