// containerd's restart monitor (runtime/restart/monitor): every interval, each container
// labelled containerd.io/restart.status is brought to that status. "running": a task that
// is missing or not running is killed, deleted and created and started again, its stdout
// and stderr going to the containerd.io/restart.loguri (or the deprecated .logpath) label;
// "stopped": a running task is killed and deleted.
//
// flotilla runs it in the tasks service. A container's task is restarted on the node where
// it last ran (its placement): its snapshot and rootfs mounts live there. A container that
// never ran anywhere has no node and is left alone. One replica reconciles at a time (a
// PostgreSQL advisory lock), so replicas never start a container twice.
import { containers as capi, namespaces as napi, snapshots as sapi, tasks as tapi, taskTypes } from '@flotilla/api';
import { type Bus, type CallContext, nodeSubject, rpcClient, serviceSubject } from '@flotilla/bus';
import type { Sql } from '@flotilla/db';
import { isNotFound, messageOf } from '@flotilla/errdefs';
import type { TasksRouter } from './router.js';

export const RESTART_STATUS_LABEL = 'containerd.io/restart.status';
export const RESTART_LOG_URI_LABEL = 'containerd.io/restart.loguri';
/** Deprecated in containerd 1.5 in favour of the log URI label; still honoured. */
export const RESTART_LOG_PATH_LABEL = 'containerd.io/restart.logpath';

/** containerd's default reconcile interval. */
const DEFAULT_INTERVAL_MS = 10_000;
const SIGKILL = 9;

export interface RestartMonitorOptions {
  intervalMs?: number;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export class RestartMonitor {
  private readonly namespaces;
  private readonly containers;
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private stopped = false;
  private readonly intervalMs: number;
  private readonly log: (msg: string, fields?: Record<string, unknown>) => void;

  constructor(private readonly bus: Bus, private readonly sql: Sql, private readonly router: TasksRouter, opts: RestartMonitorOptions = {}) {
    this.namespaces = rpcClient(bus, napi.NamespacesDefinition, (m) => serviceSubject('namespaces', m));
    this.containers = rpcClient(bus, capi.ContainersDefinition, (m) => serviceSubject('containers', m));
    this.intervalMs = opts.intervalMs ?? DEFAULT_INTERVAL_MS;
    this.log = opts.log ?? (() => {});
  }

  start(): void {
    const tick = () => {
      if (this.stopped) return;
      this.running = this.reconcileOnce()
        .catch((err) => this.log('restart monitor: reconcile', { error: messageOf(err) }))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.intervalMs);
        });
    };
    this.timer = setTimeout(tick, this.intervalMs);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** One round over every namespace, unless another replica holds the round. */
  async reconcileOnce(): Promise<void> {
    await this.sql.begin(async (tx) => {
      const [row] = await tx`SELECT pg_try_advisory_xact_lock(hashtext('flotilla.tasks.restart')) AS got`;
      if (!row?.got) return;
      const { namespaces } = await this.namespaces.list({}, {});
      for (const ns of namespaces) {
        try {
          await this.reconcileNamespace(ns.name);
        } catch (err) {
          this.log('restart monitor: namespace', { namespace: ns.name, error: messageOf(err) });
        }
      }
    });
  }

  private async reconcileNamespace(ns: string): Promise<void> {
    const ctx: CallContext = { namespace: ns };
    const { containers } = await this.containers.list({ filters: [`labels."${RESTART_STATUS_LABEL}"`] }, ctx);
    for (const c of containers) {
      const desired = c.labels[RESTART_STATUS_LABEL];
      try {
        const current = await this.status(ns, c.id);
        if (desired === 'running' && current !== taskTypes.Status.RUNNING) await this.restart(ns, c);
        else if (desired === 'stopped' && current !== undefined && current !== taskTypes.Status.STOPPED) await this.killTask(ns, c.id);
      } catch (err) {
        this.log('restart monitor: container', { namespace: ns, id: c.id, desired, error: messageOf(err) });
      }
    }
  }

  /** The task's status; undefined when it has none (containerd treats that as stopped). */
  private async status(ns: string, id: string): Promise<taskTypes.Status | undefined> {
    try {
      const node = await this.router.nodeOf(ns, id);
      const res = tapi.GetResponse.decode(await this.bus.request(nodeSubject(node, 'agent', 'Get'), tapi.GetRequest.encode({ containerId: id, execId: '' }).finish(), { namespace: ns }));
      return res.process?.status;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** containerd's killTask: kill everything, wait for the exit, delete; a task already gone is fine. */
  private async killTask(ns: string, id: string): Promise<void> {
    let node: string;
    try {
      node = await this.router.nodeOf(ns, id);
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
    const ctx: CallContext = { namespace: ns, node };
    const agent = (m: string) => nodeSubject(node, 'agent', m);
    const st = await this.status(ns, id);
    if (st === undefined) return;
    if (st !== taskTypes.Status.STOPPED) {
      await this.bus.request(agent('Kill'), tapi.KillRequest.encode({ containerId: id, execId: '', signal: SIGKILL, all: true }).finish(), ctx);
      await this.bus.request(agent('Wait'), tapi.WaitRequest.encode({ containerId: id, execId: '' }).finish(), ctx);
    }
    await this.router.delete(tapi.DeleteTaskRequest.encode({ containerId: id }).finish(), ctx);
  }

  /** containerd's startChange: kill the old task, create a new one with the log labels' IO, start it. */
  private async restart(ns: string, c: capi.Container): Promise<void> {
    let node: string;
    try {
      node = await this.router.nodeOf(ns, c.id);
    } catch (err) {
      if (isNotFound(err)) return; // never ran anywhere: no node holds its rootfs
      throw err;
    }
    await this.killTask(ns, c.id);
    const ctx: CallContext = { namespace: ns, node };
    let rootfs: sapi.MountsResponse['mounts'] = [];
    if (c.snapshotKey) {
      const snaps = rpcClient(this.bus, sapi.SnapshotsDefinition, (m) => nodeSubject(node, 'snapshots', m));
      rootfs = (await snaps.mounts({ snapshotter: c.snapshotter, key: c.snapshotKey }, ctx)).mounts;
    }
    const uri = c.labels[RESTART_LOG_URI_LABEL] || (c.labels[RESTART_LOG_PATH_LABEL] ? fileUri(c.labels[RESTART_LOG_PATH_LABEL]!) : '');
    await this.router.create(tapi.CreateTaskRequest.encode(tapi.CreateTaskRequest.fromPartial({
      containerId: c.id, rootfs, stdin: '', stdout: uri, stderr: uri, terminal: false,
    })).finish(), ctx);
    await this.bus.request(nodeSubject(node, 'agent', 'Start'), tapi.StartRequest.encode({ containerId: c.id, execId: '' }).finish(), ctx);
    this.log('restart monitor: started', { namespace: ns, id: c.id, node });
  }
}

/** cio.LogFile's URI for a path: file://<absolute path>. */
function fileUri(p: string): string {
  if (!p.startsWith('/')) throw new Error(`restart log path ${p}: absolute path needed`);
  return new URL(`file://${p}`).toString();
}
