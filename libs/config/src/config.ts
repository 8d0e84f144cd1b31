// The one place flotilla reads its environment. Every variable is listed in README.md.
import os from 'node:os';
import path from 'node:path';

export interface FlotillaConfig {
  /** FLOTILLA_HOME, or undefined for the system layout. */
  home: string | undefined;
  /** Node id: FLOTILLA_NODE_ID, default the hostname. Node-scoped subjects carry it. */
  nodeId: string;
  /** Gateway unix socket: <home>/containerd.sock or /run/flotilla/containerd.sock. */
  socket: string;
  /** Sockets and other runtime files: <home>/run or /run/flotilla. */
  runDir: string;
  /** Persistent state: <home>/state or /var/lib/flotilla. One subdirectory per app. */
  stateDir: string;
  /** Logs: <home>/logs or /var/lib/flotilla/logs. */
  logDir: string;
  natsUrl: string;
  databaseUrl: string;
  /** Largest NATS payload flotilla sends; chunks are cut below it (FLOTILLA_MAX_PAYLOAD). */
  maxPayload: number;
  /** Timeout for a unary request over the bus when the caller set no deadline. */
  requestTimeoutMs: number;
  /** The diff service refuses layers that decompress past this many bytes (FLOTILLA_MAX_LAYER_BYTES). */
  maxLayerBytes: number;
  /** Where the content service keeps blobs and ingests (FLOTILLA_CONTENT_BACKEND). */
  content: ContentBackendConfig;
  /**
   * Direct links (FLOTILLA_DIRECT=unix, the default, or off): each process's unix socket for
   * requests pinned to it by processes on the same host, beside NATS (<runDir>/direct).
   */
  directDir: string | undefined;
}

/** `local`: files under the content app's state dir; `s3`: an S3 bucket (FLOTILLA_S3_*). */
export type ContentBackendConfig =
  | { backend: 'local' }
  | {
      backend: 's3';
      /** FLOTILLA_S3_ENDPOINT: `http(s)://host[:port]`. */
      endpoint: string;
      bucket: string;
      accessKey: string;
      secretKey: string;
      region: string;
      /** FLOTILLA_S3_PREFIX: prepended to every object key. */
      prefix: string;
      /** FLOTILLA_S3_PART_SIZE: bytes per uploaded piece and multipart part. */
      partSize: number;
    };

const NODE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

function intVar(env: NodeJS.ProcessEnv, name: string, dflt: number, min: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new ConfigError(`${name}=${raw}: want an integer >= ${min}`);
  return n;
}

const S3_BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

function contentBackend(env: NodeJS.ProcessEnv): ContentBackendConfig {
  const kind = env.FLOTILLA_CONTENT_BACKEND || 'local';
  if (kind === 'local') return { backend: 'local' };
  if (kind !== 's3') throw new ConfigError(`FLOTILLA_CONTENT_BACKEND=${kind}: want local or s3`);
  const endpoint = env.FLOTILLA_S3_ENDPOINT ?? '';
  let url: URL | undefined;
  try {
    url = new URL(endpoint);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || (url.pathname !== '/' && url.pathname !== '')) {
    throw new ConfigError(`FLOTILLA_S3_ENDPOINT=${endpoint}: want http(s)://host[:port] (required with FLOTILLA_CONTENT_BACKEND=s3)`);
  }
  const bucket = env.FLOTILLA_S3_BUCKET ?? '';
  if (!S3_BUCKET_RE.test(bucket)) throw new ConfigError(`FLOTILLA_S3_BUCKET=${bucket}: want an S3 bucket name (3-63 of a-z, 0-9, '.', '-')`);
  const accessKey = env.FLOTILLA_S3_ACCESS_KEY ?? '';
  const secretKey = env.FLOTILLA_S3_SECRET_KEY ?? '';
  if (!accessKey || !secretKey) throw new ConfigError('FLOTILLA_S3_ACCESS_KEY and FLOTILLA_S3_SECRET_KEY are required with FLOTILLA_CONTENT_BACKEND=s3');
  let prefix = env.FLOTILLA_S3_PREFIX ?? '';
  if (prefix && !prefix.endsWith('/')) prefix += '/';
  return {
    backend: 's3',
    endpoint: url.origin,
    bucket,
    accessKey,
    secretKey,
    region: env.FLOTILLA_S3_REGION || 'us-east-1',
    prefix,
    partSize: intVar(env, 'FLOTILLA_S3_PART_SIZE', 8 * 1024 * 1024, 5 * 1024 * 1024),
  };
}

/** Default node id: the hostname reduced to the characters a NATS subject token may hold. */
export function defaultNodeId(): string {
  return os.hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 63) || 'node';
}

/** Reads and validates the environment; throws ConfigError with a message naming the variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): FlotillaConfig {
  const home = env.FLOTILLA_HOME ? path.resolve(env.FLOTILLA_HOME) : undefined;
  const nodeId = env.FLOTILLA_NODE_ID || defaultNodeId();
  if (!NODE_ID_RE.test(nodeId)) {
    throw new ConfigError(`FLOTILLA_NODE_ID=${nodeId}: want letters, digits, '-' or '_' (max 63)`);
  }
  const stateDir = home ? path.join(home, 'state') : '/var/lib/flotilla';
  const runDir = home ? path.join(home, 'run') : '/run/flotilla';
  return {
    home,
    nodeId,
    socket: home ? path.join(home, 'containerd.sock') : '/run/flotilla/containerd.sock',
    runDir,
    stateDir,
    logDir: home ? path.join(home, 'logs') : '/var/lib/flotilla/logs',
    natsUrl: env.NATS_URL || 'nats://127.0.0.1:4222',
    databaseUrl: env.DATABASE_URL || `postgres://postgres@/flotilla?host=${path.join(runDir, 'postgres')}&port=5432`,
    maxPayload: intVar(env, 'FLOTILLA_MAX_PAYLOAD', 8 * 1024 * 1024, 64 * 1024),
    requestTimeoutMs: intVar(env, 'FLOTILLA_REQUEST_TIMEOUT_MS', 120_000, 100),
    maxLayerBytes: intVar(env, 'FLOTILLA_MAX_LAYER_BYTES', 64 * 1024 ** 3, 4096),
    content: contentBackend(env),
    directDir: directDir(env, runDir),
  };
}

function directDir(env: NodeJS.ProcessEnv, runDir: string): string | undefined {
  const v = env.FLOTILLA_DIRECT || 'unix';
  if (v === 'off') return undefined;
  if (v !== 'unix') throw new ConfigError(`FLOTILLA_DIRECT=${v}: want unix or off`);
  return path.join(runDir, 'direct');
}

/** The state directory an app owns. */
export function appStateDir(cfg: FlotillaConfig, app: string): string {
  return path.join(cfg.stateDir, app);
}
