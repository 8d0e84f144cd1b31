// Which NATS subject serves each containerd gRPC service. Cluster services go to any
// replica; node-scoped ones (snapshots, diff) to this gateway's own node, because the
// client that called us mounts and creates FIFOs on this host.
import { nodeSubject, serviceSubject, type ClusterService } from '@flotilla/bus';

export type Route = (method: string) => string;

const CLUSTER: Record<string, ClusterService> = {
  'containerd.services.containers.v1.Containers': 'containers',
  'containerd.services.content.v1.Content': 'content',
  'containerd.services.events.v1.Events': 'events',
  'containerd.services.images.v1.Images': 'images',
  'containerd.services.leases.v1.Leases': 'leases',
  'containerd.services.namespaces.v1.Namespaces': 'namespaces',
  'containerd.services.tasks.v1.Tasks': 'tasks',
};

/** The route for a service, or undefined when the gateway answers it itself. */
export function routeFor(fullName: string, node: string): Route | undefined {
  const cluster = CLUSTER[fullName];
  if (cluster) return (m) => serviceSubject(cluster, m);
  if (fullName === 'containerd.services.snapshots.v1.Snapshots') return (m) => nodeSubject(node, 'snapshots', m);
  if (fullName === 'containerd.services.diff.v1.Diff') return (m) => nodeSubject(node, 'diff', m);
  return undefined;
}
