// @flotilla/tasks: the cluster tasks service (placement and relay) and the node agent's
// service over its node's shims.
export { TasksRouter, tasksMigrations } from './router.js';
export { AgentService } from './agent.js';
export { RestartMonitor, RESTART_STATUS_LABEL, RESTART_LOG_URI_LABEL, RESTART_LOG_PATH_LABEL } from './restart.js';
export type { RestartMonitorOptions } from './restart.js';
