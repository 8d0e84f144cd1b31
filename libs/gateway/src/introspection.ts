// ctr plugins ls: the plugins are the services running on the bus right now, found
// through the NATS micro discovery protocol, plus the gRPC services this gateway serves.
import { RequestStrategy } from 'nats';
import { introspection } from '@flotilla/api';
import type { Bus } from '@flotilla/bus';

type Plugin = introspection.Plugin;

const GRPC_PLUGINS = ['containers', 'content', 'diff', 'events', 'healthcheck', 'images', 'introspection', 'leases', 'namespaces', 'snapshots', 'tasks', 'version'];

export async function listPlugins(bus: Bus, node: string, _filters: string[]): Promise<Plugin[]> {
  const plugins: Plugin[] = [];
  const seen = new Set<string>();
  const add = (type: string, id: string, exports: Record<string, string> = {}) => {
    const key = `${type}/${id}`;
    if (seen.has(key)) return;
    seen.add(key);
    plugins.push(introspection.Plugin.fromPartial({ type, id, exports, requires: [], capabilities: [], platforms: [] }));
  };
  const infos = await bus.nc.services.client({ maxWait: 500, strategy: RequestStrategy.Timer }).info();
  for await (const info of infos) {
    const md = info.metadata ?? {};
    if (md.node && md.node !== node) continue; // another node's snapshotter or agent
    for (const entry of (md.plugins ?? `${md.plugin_type ?? ''} ${md.plugin_id ?? ''}`).split(',')) {
      const [type, id] = entry.trim().split(/\s+/);
      if (type && id) add(type, id, { service: info.name, version: info.version, ...(md.node ? { node: md.node } : {}) });
    }
  }
  for (const id of GRPC_PLUGINS) add('io.containerd.grpc.v1', id);
  return plugins;
}
