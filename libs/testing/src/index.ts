// @flotilla/testing: integration-test helpers over real servers (never mocks). Servers are
// started by @flotilla/launcher's code, the same that `npm start` runs.

// A lone nats-server / PostgreSQL cluster in a temp dir, for tests of one lib.
export { startNats } from './nats.js';
export type { TestNats } from './nats.js';
export { startPostgres } from './postgres.js';
export type { TestPostgres, PostgresOptions } from './postgres.js';
// An S3 server (s3rver) in a temp dir, for the S3 content backend.
export { startS3 } from './s3.js';
export type { TestS3 } from './s3.js';
// A gateway alone on a lone nats-server, with a grpc-js client on its socket.
export { startLoneGateway } from './gateway.js';
export type { LoneGateway } from './gateway.js';
// A whole flotilla stack (servers and the eight built apps) in a temp FLOTILLA_HOME.
export { startStack, waitServices } from './stack.js';
export type { Stack } from './stack.js';
// The shim daemon of one task, to stop or kill it.
export { shimOf } from './shims.js';
// The real ctr against any socket.
export { ctr } from './ctr.js';
export type { CtrOptions, CtrResult } from './ctr.js';
// Isolation by name: a containerd namespace per test title.
export { testNamespace } from './namespace.js';
// Images built locally from busybox-static (OCI archives for `ctr images import`).
export { buildBusyboxImage } from './image.js';
export type { TestImage, BusyboxImageOptions } from './image.js';
// Debian's containerd as a reference for comparison tests and the benchmark only.
export { startReferenceContainerd } from './reference.js';
export type { Reference } from './reference.js';
// containerd's Go testsuites and Go client cases (tools/gotest), built with golang-go.
export { buildGoTest, runGoTest, goEnv } from './gotest.js';
export type { GoTestResult } from './gotest.js';
