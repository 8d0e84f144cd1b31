// TasksRouter's remembered placements against real nats-server and PostgreSQL, with two
// router replicas and fake node agents: a replica that remembers a node must still reach a
// task deleted and created again elsewhere through the other replica, and pass a node's own
// NotFound through when the placement has not moved.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { containers as capi, events as ev, evTask, flotillaAgent, tasks as tapi, type MessageType } from '@flotilla/api';
import { Bus, CONTINUE, eventSubject, nodeSubject, serviceSubject, type CallContext, type EndpointSpec } from '@flotilla/bus';
import { connectDb, migrate, type Sql } from '@flotilla/db';
import { ErrorClass, withClass } from '@flotilla/errdefs';
import { TasksRouter, tasksMigrations } from '@flotilla/tasks';
import { startNats, startPostgres, testNamespace, type TestNats, type TestPostgres } from '@flotilla/testing';

let nats: TestNats;
let pg: TestPostgres;
let sql: Sql;
let fakes: Bus;
const buses: Bus[] = [];
const routers: TasksRouter[] = [];

/** A node agent holding task ids; each answer carries its node's pid so tests see who answered. */
class FakeAgent {
  readonly tasks = new Set<string>();
  readonly calls: string[] = [];
  constructor(readonly node: string, readonly pid: number) {}

  endpoints(): EndpointSpec[] {
    const ep = <Req>(method: string, type: MessageType<Req>, fn: (req: Req, ns: string) => Uint8Array): EndpointSpec => ({
      method,
      subject: nodeSubject(this.node, 'agent', method),
      unary: async (data, ctx) => {
        const req = type.decode(data);
        this.calls.push(method);
        return fn(req, ctx.namespace!);
      },
    });
    const need = (ns: string, id: string) => {
      if (!this.tasks.has(`${ns}/${id}`)) throw withClass(ErrorClass.NotFound, `task ${id} not found`);
    };
    return [
      ep('Create', flotillaAgent.CreateRequest, (r, ns) => {
        this.tasks.add(`${ns}/${r.request!.containerId}`);
        return tapi.CreateTaskResponse.encode(tapi.CreateTaskResponse.fromPartial({ containerId: r.request!.containerId, pid: this.pid })).finish();
      }),
      ep('Get', tapi.GetRequest, (r, ns) => {
        need(ns, r.containerId);
        return tapi.GetResponse.encode(tapi.GetResponse.fromPartial({ process: { containerId: r.containerId, id: r.containerId, pid: this.pid } })).finish();
      }),
      ep('Delete', tapi.DeleteTaskRequest, (r, ns) => {
        need(ns, r.containerId);
        this.tasks.delete(`${ns}/${r.containerId}`);
        return tapi.DeleteResponse.encode(tapi.DeleteResponse.fromPartial({ pid: this.pid })).finish();
      }),
    ];
  }
}

const a = new FakeAgent('node-a', 101);
const b = new FakeAgent('node-b', 202);

before(async () => {
  nats = await startNats();
  pg = await startPostgres();
  sql = connectDb(pg.url);
  await migrate(sql, 'tasks', tasksMigrations);
  fakes = await Bus.connect({ url: nats.url, name: 'fakes' });
  await fakes.addService({
    name: 'fake-metadata',
    version: '0.0.1',
    description: 'containers.Get: every container exists but those named missing*',
    endpoints: [{
      method: 'Get',
      subject: serviceSubject('containers', 'Get'),
      unary: async (data) => {
        const { id } = capi.GetContainerRequest.decode(data);
        if (id.startsWith('missing')) throw withClass(ErrorClass.NotFound, `container "${id}": not found`);
        return capi.GetContainerResponse.encode({ container: capi.Container.fromPartial({ id, spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Spec', value: Buffer.from('{}') } }) }).finish();
      },
    }],
  });
  for (const agent of [a, b]) await fakes.addService({ name: `fake-agent-${agent.node}`, version: '0.0.1', description: 'fake agent', endpoints: agent.endpoints() });
  for (let i = 0; i < 2; i++) {
    const bus = await Bus.connect({ url: nats.url, name: `tasks-${i}` });
    buses.push(bus);
    const r = new TasksRouter(bus, sql);
    r.start();
    routers.push(r);
  }
});

after(async () => {
  for (const r of routers) r.stop();
  for (const bus of buses) await bus.close();
  await fakes?.close();
  await sql?.end({ timeout: 5 });
  await pg?.stop();
  await nats?.stop();
});

async function call<Res>(r: TasksRouter, method: string, req: Uint8Array, ctx: CallContext, res: MessageType<Res>): Promise<Res> {
  const ep = r.endpoints().find((e) => e.method === method)!;
  if (!('unary' in ep)) throw new Error('not unary');
  const out = await ep.unary(req, ctx);
  assert.notEqual(out, CONTINUE);
  return res.decode(out as Uint8Array);
}

const create = (r: TasksRouter, ns: string, id: string, node: string) =>
  call(r, 'Create', tapi.CreateTaskRequest.encode(tapi.CreateTaskRequest.fromPartial({ containerId: id })).finish(), { namespace: ns, node }, tapi.CreateTaskResponse);
const get = (r: TasksRouter, ns: string, id: string) =>
  call(r, 'Get', tapi.GetRequest.encode({ containerId: id, execId: '' }).finish(), { namespace: ns }, tapi.GetResponse);
const del = (r: TasksRouter, ns: string, id: string) =>
  call(r, 'Delete', tapi.DeleteTaskRequest.encode({ containerId: id }).finish(), { namespace: ns }, tapi.DeleteResponse);
const placement = async (ns: string, id: string) =>
  (await sql`SELECT node FROM tasks_placements WHERE namespace = ${ns} AND container_id = ${id}`)[0]?.node as string | undefined;

test('a task deleted and created again on another node through the other replica is reached there', async (t) => {
  const ns = testNamespace(t.name);
  const [r1, r2] = routers as [TasksRouter, TasksRouter];
  assert.equal((await create(r1, ns, 'x', 'node-a')).pid, 101);
  assert.equal((await get(r1, ns, 'x')).process!.pid, 101); // r1 now remembers node-a
  assert.equal((await del(r2, ns, 'x')).pid, 101);
  assert.equal(await placement(ns, 'x'), undefined);
  assert.equal((await create(r2, ns, 'x', 'node-b')).pid, 202);
  // No /tasks/delete event came (fake agents publish none): r1 asks node-a, which answers
  // NotFound, reads the placement again and asks node-b.
  const asked = a.calls.length;
  assert.equal((await get(r1, ns, 'x')).process!.pid, 202);
  assert.deepEqual(a.calls.slice(asked), ['Get']);
  // Delete through r1 goes to node-b and removes the placement; node-a's NotFound did not.
  assert.equal((await del(r1, ns, 'x')).pid, 202);
  assert.equal(await placement(ns, 'x'), undefined);
  assert.equal(b.tasks.has(`${ns}/x`), false);
});

test("a node's NotFound passes through when the placement has not moved", async (t) => {
  const ns = testNamespace(t.name);
  const [r1] = routers as [TasksRouter];
  await create(r1, ns, 'gone', 'node-a');
  await get(r1, ns, 'gone');
  a.tasks.delete(`${ns}/gone`); // its shim died: the node forgot it, the placement stays
  await assert.rejects(get(r1, ns, 'gone'), { errorClass: ErrorClass.NotFound, message: 'task gone not found' });
  assert.equal(await placement(ns, 'gone'), 'node-a');
  // Delete forgets the placement, as before.
  await assert.rejects(del(r1, ns, 'gone'), { errorClass: ErrorClass.NotFound, message: 'task gone not found' });
  assert.equal(await placement(ns, 'gone'), undefined);
  // With no placement: the router's own NotFound.
  await assert.rejects(get(r1, ns, 'gone'), { errorClass: ErrorClass.NotFound, message: 'task gone not found' });
});

test('a replica without the placement in memory: the table decides, then the container, then the task', async (t) => {
  const ns = testNamespace(t.name);
  const [r1, r2] = routers as [TasksRouter, TasksRouter];
  // The container is read while the table is; a placement found wins over its answer.
  await create(r1, ns, 'p', 'node-b');
  b.tasks.add(`${ns}/missing-p`);
  await sql`INSERT INTO tasks_placements (namespace, container_id, node) VALUES (${ns}, 'missing-p', 'node-b')`;
  assert.equal((await get(r2, ns, 'missing-p')).process!.pid, 202);
  assert.equal((await get(r2, ns, 'p')).process!.pid, 202);
  // No placement: the container's NotFound first, then the router's own for the task.
  await assert.rejects(get(r2, ns, 'missing-q'), { errorClass: ErrorClass.NotFound, message: 'container "missing-q": not found' });
  await assert.rejects(get(r2, ns, 'q'), { errorClass: ErrorClass.NotFound, message: 'task q not found' });
  await del(r2, ns, 'p');
  await del(r2, ns, 'missing-p');
});

test('a /tasks/delete event makes a replica forget the node it remembered', async (t) => {
  const ns = testNamespace(t.name);
  const [r1, r2] = routers as [TasksRouter, TasksRouter];
  await create(r1, ns, 'y', 'node-a');
  await get(r1, ns, 'y');
  await del(r2, ns, 'y');
  await create(r2, ns, 'y', 'node-b');
  const event = { typeUrl: 'containerd.events.TaskDelete', value: Buffer.from(evTask.TaskDelete.encode(evTask.TaskDelete.fromPartial({ containerId: 'y', pid: 101 })).finish()) };
  const env = ev.Envelope.encode(ev.Envelope.fromPartial({ namespace: ns, topic: '/tasks/delete', event })).finish();
  // NATS keeps one publisher's messages in order: once r1's bus has the probe, it has handled the event.
  const probe = `flotilla.v1.test.probe.${ns}`;
  const probed = new Promise<void>((resolve) => buses[0]!.subscribe(probe, () => resolve()));
  await buses[0]!.request(serviceSubject('containers', 'Get'), capi.GetContainerRequest.encode({ id: 'y' }).finish(), { namespace: ns }); // subscription in place
  fakes.publish(eventSubject('/tasks/delete'), env, { namespace: ns });
  fakes.publish(probe, new Uint8Array(0), {});
  await probed;
  const asked = a.calls.length;
  assert.equal((await get(r1, ns, 'y')).process!.pid, 202);
  assert.deepEqual(a.calls.slice(asked), [], 'node-a is not asked');
  await del(r1, ns, 'y');
});

test('create for a missing container fails with its NotFound and leaves no placement', async (t) => {
  const ns = testNamespace(t.name);
  const [r1] = routers as [TasksRouter];
  const created = a.calls.filter((c) => c === 'Create').length;
  await assert.rejects(create(r1, ns, 'missing-1', 'node-a'), { errorClass: ErrorClass.NotFound, message: 'container "missing-1": not found' });
  assert.equal(await placement(ns, 'missing-1'), undefined);
  assert.equal(a.calls.filter((c) => c === 'Create').length, created, 'no agent was asked to create');
  // A stale placement (its task gone) taken over during the failed create goes too.
  await sql`INSERT INTO tasks_placements (namespace, container_id, node) VALUES (${ns}, 'missing-2', 'node-b')`;
  await assert.rejects(create(r1, ns, 'missing-2', 'node-a'), { errorClass: ErrorClass.NotFound, message: 'container "missing-2": not found' });
  assert.equal(await placement(ns, 'missing-2'), undefined);
  // The container's NotFound comes before the task's AlreadyExists, as in containerd; the
  // live task's placement stays.
  b.tasks.add(`${ns}/missing-3`);
  await sql`INSERT INTO tasks_placements (namespace, container_id, node) VALUES (${ns}, 'missing-3', 'node-b')`;
  await assert.rejects(create(r1, ns, 'missing-3', 'node-a'), { errorClass: ErrorClass.NotFound, message: 'container "missing-3": not found' });
  assert.equal(await placement(ns, 'missing-3'), 'node-b');
  b.tasks.delete(`${ns}/missing-3`);
});

test('create of a task that runs on another node is AlreadyExists and keeps that placement', async (t) => {
  const ns = testNamespace(t.name);
  const [r1, r2] = routers as [TasksRouter, TasksRouter];
  await create(r1, ns, 'z', 'node-a');
  await assert.rejects(create(r2, ns, 'z', 'node-b'), { errorClass: ErrorClass.AlreadyExists, message: 'task z: already exists' });
  assert.equal(await placement(ns, 'z'), 'node-a');
  assert.equal(b.tasks.has(`${ns}/z`), false);
  await del(r1, ns, 'z');
});
