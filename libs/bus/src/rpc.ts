// Typed glue between ts-proto service definitions and the bus. A service implements the
// methods of a containerd (or flotilla) definition; `serveDefinition` decodes requests and
// encodes replies, `rpcClient` is the remote twin with the same method shapes.
import type { MessageType, ServiceDefinition } from '@flotilla/api';
import { errInvalidArgument, messageOf } from '@flotilla/errdefs';
import { Bus, CONTINUE, type EndpointSpec } from './bus.js';
import { currentContext, type CallContext } from './context.js';

type Req<M> = M extends { requestType: MessageType<infer R> } ? R : never;
type Res<M> = M extends { responseType: MessageType<infer R> } ? R : never;

/**
 * Server-side shape of a definition: unary methods return a reply (or CONTINUE), streams an
 * iterable. A reply may also be given already encoded (a Uint8Array holding the response
 * message's bytes): it is sent as is, for stores that keep protobuf bytes.
 */
export type Implementation<D extends ServiceDefinition> = {
  [K in keyof D['methods']]?: D['methods'][K] extends { responseStream: true }
    ? (req: Req<D['methods'][K]>, ctx: CallContext) => AsyncIterable<Res<D['methods'][K]> | Uint8Array | readonly Uint8Array[]>
    : (req: Req<D['methods'][K]>, ctx: CallContext) => Promise<Res<D['methods'][K]> | Uint8Array | typeof CONTINUE>;
};

/** Client-side shape of a definition. */
export type Client<D extends ServiceDefinition> = {
  [K in keyof D['methods']]: D['methods'][K] extends { responseStream: true }
    ? (req: Partial<Req<D['methods'][K]>>, ctx?: CallContext) => AsyncIterable<Res<D['methods'][K]>>
    : (req: Partial<Req<D['methods'][K]>>, ctx?: CallContext) => Promise<Res<D['methods'][K]>>;
};

function decode<T>(type: MessageType<T>, data: Uint8Array, what: string): T {
  try {
    return type.decode(data);
  } catch (err) {
    throw errInvalidArgument(`malformed ${what}: ${messageOf(err)}`);
  }
}

/**
 * Endpoints for every method of `def` that `impl` provides. Client-streaming methods are
 * not served here: their callers split them into unary steps (see the gateway).
 */
export function endpointsFor<D extends ServiceDefinition>(def: D, subjectOf: (method: string) => string, impl: Implementation<D>): EndpointSpec[] {
  const eps: EndpointSpec[] = [];
  for (const [key, m] of Object.entries(def.methods)) {
    const fn = (impl as Record<string, Function | undefined>)[key];
    if (!fn) continue;
    const subject = subjectOf(m.name);
    if (m.responseStream) {
      eps.push({
        method: m.name,
        subject,
        stream: async function* (data, ctx) {
          const req = decode(m.requestType, data, `${def.name}.${m.name} request`);
          for await (const res of fn(req, ctx) as AsyncIterable<unknown>) {
            yield res instanceof Uint8Array ? res : Array.isArray(res) ? (res as readonly Uint8Array[]) : m.responseType.encode(res).finish();
          }
        },
      });
    } else {
      eps.push({
        method: m.name,
        subject,
        unary: async (data, ctx) => {
          const req = decode(m.requestType, data, `${def.name}.${m.name} request`);
          const res = await fn(req, ctx);
          return res === CONTINUE ? CONTINUE : res instanceof Uint8Array ? res : m.responseType.encode(res).finish();
        },
      });
    }
  }
  return eps;
}

export function rpcClient<D extends ServiceDefinition>(bus: Bus, def: D, subjectOf: (method: string) => string): Client<D> {
  const out: Record<string, unknown> = {};
  for (const [key, m] of Object.entries(def.methods)) {
    const subject = () => subjectOf(m.name);
    if (m.responseStream) {
      out[key] = async function* (req: unknown, ctx?: CallContext) {
        const data = m.requestType.encode(m.requestType.fromPartial(req)).finish();
        for await (const b of bus.requestStream(subject(), data, ctx ?? currentContext())) yield m.responseType.decode(b);
      };
    } else {
      out[key] = async (req: unknown, ctx?: CallContext) => {
        const data = m.requestType.encode(m.requestType.fromPartial(req)).finish();
        return m.responseType.decode(await bus.request(subject(), data, ctx ?? currentContext()));
      };
    }
  }
  return out as Client<D>;
}
