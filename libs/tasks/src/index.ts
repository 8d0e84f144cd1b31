// @flotilla/tasks: the cluster tasks service (placement and relay) and the node agent's
// service over its node's shims.
export { TasksRouter, tasksMigrations } from './router.js';
export { AgentService } from './agent.js';
