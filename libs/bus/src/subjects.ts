// Every NATS subject flotilla uses is built here. Layout (see docs/architecture.md):
//   flotilla.v1.svc.<service>.<Method>            cluster services (queue group, any replica)
//   flotilla.v1.inst.<instance>.<service>.<Method> one replica (sessions pinned to it)
//   flotilla.v1.node.<node>.<service>.<Method>    node-scoped services (snapshots, diff, agent)
//   flotilla.v1.events.<topic tokens>             containerd events, e.g. /tasks/exit -> tasks.exit
//   flotilla.v1.stream.<instance>                 continuation of a streamed reply
export const SUBJECT_ROOT = 'flotilla.v1';

const TOKEN_RE = /^[A-Za-z0-9_-]+$/;

export class SubjectError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SubjectError';
  }
}

function token(kind: string, value: string): string {
  if (!TOKEN_RE.test(value)) throw new SubjectError(`invalid ${kind} for a subject token: ${JSON.stringify(value)}`);
  return value;
}

/**
 * Cluster services (named by containerd API, not by process): any replica may answer.
 * `gc` is internal (the metadata service's garbage collector); the gateway never routes to it.
 */
export const ClusterService = ['content', 'images', 'namespaces', 'containers', 'leases', 'tasks', 'events', 'gc'] as const;
export type ClusterService = (typeof ClusterService)[number];
/** Node services: only the named node answers. */
export const NodeService = ['snapshots', 'diff', 'agent'] as const;
export type NodeService = (typeof NodeService)[number];

export function serviceSubject(service: ClusterService, method: string): string {
  return `${SUBJECT_ROOT}.svc.${token('service', service)}.${token('method', method)}`;
}

export function nodeSubject(node: string, service: NodeService, method: string): string {
  return `${SUBJECT_ROOT}.node.${token('node id', node)}.${token('service', service)}.${token('method', method)}`;
}

const TOPIC_RE = /^(\/[A-Za-z0-9_-]+)+$/;

/** containerd topics are slash paths of simple tokens; each becomes a subject token. */
export function eventSubject(topic: string): string {
  if (!TOPIC_RE.test(topic)) throw new SubjectError(`invalid event topic: ${JSON.stringify(topic)}`);
  return `${SUBJECT_ROOT}.events${topic.replaceAll('/', '.')}`;
}

/** Subscribes to every event. */
export const ALL_EVENTS = `${SUBJECT_ROOT}.events.>`;

export function topicOfSubject(subject: string): string {
  const prefix = `${SUBJECT_ROOT}.events.`;
  if (!subject.startsWith(prefix)) throw new SubjectError(`not an event subject: ${subject}`);
  return '/' + subject.slice(prefix.length).replaceAll('.', '/');
}

export function streamSubject(instance: string): string {
  return `${SUBJECT_ROOT}.stream.${token('instance', instance)}`;
}

/** A subject that reaches one replica only (sessions pinned to the instance that holds them). */
export function instanceSubject(service: ClusterService, instance: string, method: string): string {
  return `${SUBJECT_ROOT}.inst.${token('instance', instance)}.${token('service', service)}.${token('method', method)}`;
}

const PINNED_RE = /^flotilla\.v1\.(?:inst|stream)\.([A-Za-z0-9_-]+)(?:\.|$)/;

/** The instance an instance-pinned subject (inst.* or stream.*) reaches; undefined for others. */
export function instanceOfSubject(subject: string): string | undefined {
  return PINNED_RE.exec(subject)?.[1];
}
