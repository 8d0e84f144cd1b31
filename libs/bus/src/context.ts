// The per-call context that travels with every request: namespace, lease, deadline and the
// node of the gateway that received the call. Held in AsyncLocalStorage so handlers and the
// calls they make never pass it by hand; written to and read from NATS headers only here.
import { AsyncLocalStorage } from 'node:async_hooks';
import { headers as natsHeaders, type MsgHdrs } from 'nats';

export interface CallContext {
  namespace?: string;
  lease?: string;
  /** Absolute deadline, epoch milliseconds. */
  deadline?: number;
  /** Node whose gateway received the client's call; node-scoped work is routed there. */
  node?: string;
}

export const Header = {
  Namespace: 'Flotilla-Namespace',
  Lease: 'Flotilla-Lease',
  Deadline: 'Flotilla-Deadline',
  Node: 'Flotilla-Node',
  ErrorClass: 'Flotilla-Error-Class',
  // NATS micro's own error headers; their code carries the gRPC status code.
  ErrorCode: 'Nats-Service-Error-Code',
  Error: 'Nats-Service-Error',
  /** Reply to a held call (e.g. Wait): nothing yet, send the same request again. */
  Continue: 'Flotilla-Continue',
  Stream: 'Flotilla-Stream',
  StreamSubject: 'Flotilla-Stream-Subject',
  StreamEnd: 'Flotilla-Stream-End',
  StreamCancel: 'Flotilla-Stream-Cancel',
  /** On a request: the caller can take direct links (see direct.ts). */
  DirectOk: 'Flotilla-Direct-Ok',
  /** On a reply: `<instance> unix:<path>`, the replying instance's direct link. */
  Direct: 'Flotilla-Direct',
} as const;

const storage = new AsyncLocalStorage<CallContext>();

export function currentContext(): CallContext {
  return storage.getStore() ?? {};
}

export function runWithContext<T>(ctx: CallContext, fn: () => T): T {
  return storage.run(ctx, fn);
}

/** Milliseconds left before the current deadline, or `fallback` when there is none. */
export function remainingMs(ctx: CallContext, fallback: number): number {
  return ctx.deadline === undefined ? fallback : Math.max(0, ctx.deadline - Date.now());
}

/** The header operations flotilla uses: NATS's MsgHdrs has them, and so do PlainHeaders. */
export interface HeaderMap {
  /** The value, or "" when absent (as MsgHdrs answers). */
  get(k: string): string;
  set(k: string, v: string): void;
  keys(): string[];
}

/**
 * Headers as a plain object. Requests are built with these and cross a direct link as JSON
 * of `values`; NATS's MsgHdrs (canonicalised keys, arrays of values) is made only for a
 * request that goes through NATS. Keys are used exactly as given.
 */
export class PlainHeaders implements HeaderMap {
  constructor(readonly values: Record<string, string> = {}) {}
  get(k: string): string {
    return this.values[k] ?? '';
  }
  set(k: string, v: string): void {
    this.values[k] = v;
  }
  keys(): string[] {
    return Object.keys(this.values);
  }
}

/** The same headers as NATS's MsgHdrs. */
export function toNatsHeaders(h: HeaderMap): MsgHdrs {
  const out = natsHeaders();
  for (const k of h.keys()) out.set(k, h.get(k));
  return out;
}

export function contextToHeaders<H extends HeaderMap = PlainHeaders>(ctx: CallContext, h: H = new PlainHeaders() as HeaderMap as H): H {
  if (ctx.namespace) h.set(Header.Namespace, ctx.namespace);
  if (ctx.lease) h.set(Header.Lease, ctx.lease);
  if (ctx.deadline !== undefined) h.set(Header.Deadline, String(ctx.deadline));
  if (ctx.node) h.set(Header.Node, ctx.node);
  return h;
}

export function contextFromHeaders(h: HeaderMap | undefined): CallContext {
  if (!h) return {};
  const ctx: CallContext = {};
  const ns = h.get(Header.Namespace);
  if (ns) ctx.namespace = ns;
  const lease = h.get(Header.Lease);
  if (lease) ctx.lease = lease;
  const dl = Number(h.get(Header.Deadline));
  if (h.get(Header.Deadline) && Number.isFinite(dl)) ctx.deadline = dl;
  const node = h.get(Header.Node);
  if (node) ctx.node = node;
  return ctx;
}
