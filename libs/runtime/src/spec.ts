// A default OCI runtime spec for Linux, with what containerd 1.6's oci.GenerateSpec gives
// a container before image and user options are applied: the same namespaces, mounts,
// capabilities, masked and read-only paths, device rule and rlimit. Used by tests and by
// callers that have no image config to start from.

/** The OCI runtime-spec version containerd 1.6 writes. */
export const OCI_SPEC_VERSION = '1.0.2-dev';
/** containerd's oci.DefaultPathEnv. */
export const DEFAULT_PATH_ENV = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

/** The parts of the OCI runtime spec flotilla writes; other fields pass through untouched. */
export interface OciSpec {
  ociVersion: string;
  process?: {
    terminal?: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    args?: string[];
    env?: string[];
    cwd: string;
    capabilities?: Partial<Record<'bounding' | 'effective' | 'permitted' | 'inheritable' | 'ambient', string[]>>;
    rlimits?: { type: string; hard: number; soft: number }[];
    noNewPrivileges?: boolean;
    [k: string]: unknown;
  };
  root?: { path: string; readonly?: boolean };
  hostname?: string;
  mounts?: OciMount[];
  annotations?: Record<string, string>;
  linux?: {
    uidMappings?: { containerID: number; hostID: number; size: number }[];
    gidMappings?: { containerID: number; hostID: number; size: number }[];
    resources?: { devices?: { allow: boolean; type?: string; major?: number; minor?: number; access?: string }[]; [k: string]: unknown };
    cgroupsPath?: string;
    namespaces?: { type: string; path?: string }[];
    maskedPaths?: string[];
    readonlyPaths?: string[];
    [k: string]: unknown;
  };
  [k: string]: unknown;
}

export interface DefaultSpecOptions {
  /** The process to run (OCI process.args). */
  args: string[];
  /** Environment; default just containerd's default PATH. */
  env?: string[];
  /** Working directory inside the container; default "/". */
  cwd?: string;
  terminal?: boolean;
  hostname?: string;
  /** With `id`, sets linux.cgroupsPath to /<namespace>/<id> as containerd does. */
  namespace?: string;
  id?: string;
}

function defaultCaps(): string[] {
  return [
    'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID',
    'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
  ];
}

export function defaultMounts(): OciMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/run', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
  ];
}

export function defaultSpec(o: DefaultSpecOptions): OciSpec {
  const spec: OciSpec = {
    ociVersion: OCI_SPEC_VERSION,
    process: {
      terminal: o.terminal ?? false,
      user: { uid: 0, gid: 0 },
      args: [...o.args],
      env: o.env ? [...o.env] : [DEFAULT_PATH_ENV],
      cwd: o.cwd ?? '/',
      capabilities: {
        bounding: defaultCaps(),
        effective: defaultCaps(),
        permitted: defaultCaps(),
      },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: 'rootfs' },
    mounts: defaultMounts(),
    linux: {
      resources: { devices: [{ allow: false, access: 'rwm' }] },
      namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network' }],
      maskedPaths: [
        '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
        '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware', '/proc/scsi',
      ],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
  if (o.hostname) spec.hostname = o.hostname;
  if (o.namespace && o.id) spec.linux!.cgroupsPath = `/${o.namespace}/${o.id}`;
  return spec;
}

/** The spec as the bytes containerd stores (containers.Container.spec value) and writes as config.json. */
export function encodeSpec(spec: OciSpec): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(spec));
}
