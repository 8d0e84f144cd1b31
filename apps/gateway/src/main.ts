// flotilla-gateway: containerd's gRPC API on this node's socket, forwarded over NATS.
import { runApp, FLOTILLA_VERSION } from '@flotilla/app';
import { appStateDir } from '@flotilla/config';
import { Gateway } from '@flotilla/gateway';

/** The containerd API version we serve, with flotilla's own as semver build metadata. */
const VERSION = `1.6.20+flotilla.${FLOTILLA_VERSION}`;

void runApp('gateway', async ({ cfg, bus, log }) => {
  const gw = new Gateway({
    bus,
    socket: cfg.socket,
    nodeId: cfg.nodeId,
    stateDir: appStateDir(cfg, 'gateway'),
    version: VERSION,
    revision: process.env.FLOTILLA_REVISION ?? 'dev',
    log,
  });
  await gw.start();
  log('listening', { socket: cfg.socket });
  return () => gw.stop();
});
