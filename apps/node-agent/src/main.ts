// flotilla-node-agent: owns this node's runc shims; serves the node agent API and publishes
// the events its shims forward.
import path from 'node:path';
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { appStateDir } from '@flotilla/config';
import { publishEnvelope } from '@flotilla/events';
import { ShimManager } from '@flotilla/runtime';
import { AgentService } from '@flotilla/tasks';

void runApp('node-agent', async ({ cfg, bus, log }) => {
  const shims = new ShimManager({
    stateDir: appStateDir(cfg, 'node-agent'),
    runDir: path.join(cfg.runDir, 'node-agent'),
    eventsSocket: path.join(cfg.runDir, 'node-agent', 'events.ttrpc.sock'),
    grpcAddress: cfg.socket,
    logDir: cfg.logDir,
    onEvent: (e) => publishEnvelope(bus, { namespace: e.namespace, topic: e.topic, event: e.event, timestamp: e.timestamp }),
  });
  await shims.start();
  const restored = await shims.loadExisting();
  if (restored.length) log('reconnected to running shims', { tasks: restored.length });
  const agent = new AgentService(shims, { log });
  await bus.addService({
    name: 'flotilla-node-agent',
    version: FLOTILLA_VERSION,
    description: `node agent of ${cfg.nodeId}: runc shims (io.containerd.runtime.v2 task)`,
    metadata: { node: cfg.nodeId, plugins: 'io.containerd.runtime.v2 task,io.containerd.runtime.v2 shim' },
    endpoints: agent.endpoints(cfg.nodeId),
  });
  // Shims and their containers outlive the agent: stopping only drops connections.
  return () => shims.close();
});
