// containerd's Containers API through the gateway: the real ctr (create, ls with filters,
// label, info, rm) and raw gRPC for what ctr does not reach (List, update masks, extensions,
// error classes), with the /containers/* events seen on NATS.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from 'nats';
import { containers as capi, events as ev, evContainer, type MessageType } from '@flotilla/api';
import { buildBusyboxImage, startStack, testNamespace, type Stack, type TestImage } from '@flotilla/testing';

let stack: Stack;
let image: TestImage;
let client: grpc.Client;
let nc: NatsConnection;
const seen: { topic: string; namespace: string; id: string; labels?: Record<string, string> }[] = [];

before(async () => {
  image = await buildBusyboxImage();
  stack = await startStack();
  client = new grpc.Client(`unix://${stack.socket}`, grpc.credentials.createInsecure());
  nc = await connect({ servers: stack.env.NATS_URL! });
  nc.subscribe('flotilla.v1.events.containers.>', {
    callback: (err, m) => {
      if (err) return;
      const env = ev.Envelope.decode(m.data);
      const v = env.event!.value;
      if (env.topic === '/containers/create') seen.push({ topic: env.topic, namespace: env.namespace, id: evContainer.ContainerCreate.decode(v).id });
      if (env.topic === '/containers/update') {
        const u = evContainer.ContainerUpdate.decode(v);
        seen.push({ topic: env.topic, namespace: env.namespace, id: u.id, labels: u.labels });
      }
      if (env.topic === '/containers/delete') seen.push({ topic: env.topic, namespace: env.namespace, id: evContainer.ContainerDelete.decode(v).id });
    },
  });
});

after(async () => {
  client?.close();
  await nc?.close();
  await stack?.stop();
});

function call<Req, Res>(method: string, reqType: MessageType<Req>, resType: MessageType<Res>, req: Partial<Req>, ns: string): Promise<Res> {
  const md = new grpc.Metadata();
  md.set('containerd-namespace', ns);
  const data = Buffer.from(reqType.encode(reqType.fromPartial(req as any)).finish());
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(`/containerd.services.containers.v1.Containers/${method}`, (b: Buffer) => b, (b: Buffer) => b, data, md, (err, res) =>
      err ? reject(err) : resolve(resType.decode(res!)),
    ),
  );
}

/** The namespace's containers as ListStream sends them. */
function listStream(ns: string): Promise<capi.Container[]> {
  const md = new grpc.Metadata();
  md.set('containerd-namespace', ns);
  const data = Buffer.from(capi.ListContainersRequest.encode({ filters: [] }).finish());
  const call = client.makeServerStreamRequest('/containerd.services.containers.v1.Containers/ListStream', (b: Buffer) => b, (b: Buffer) => b, data, md);
  const out: capi.Container[] = [];
  return new Promise((resolve, reject) => {
    call.on('data', (b: Buffer) => out.push(capi.ListContainerMessage.decode(b).container!));
    call.on('error', reject);
    call.on('end', () => resolve(out));
  });
}

const C = capi;
const spec = { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Spec', value: Buffer.from('{"ociVersion":"1.0.2"}') };
const ext = (s: string) => ({ typeUrl: 'example.com/Ext', value: Buffer.from(s) });

async function ok(ns: string, args: string[]): Promise<string> {
  const r = await stack.ctr(args, { namespace: ns });
  assert.equal(r.code, 0, `ctr ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

test('ctr creates, lists with filters, labels, shows and removes containers', async (t) => {
  const ns = testNamespace(t.name);
  await ok(ns, ['images', 'import', image.archivePath]);
  await ok(ns, ['containers', 'create', '--label', 'tier=web', image.name, 'web1']);
  await ok(ns, ['containers', 'create', '--label', 'tier=db', image.name, 'db1']);
  await ok(ns, ['containers', 'create', image.name, 'plain']);
  assert.deepEqual((await ok(ns, ['containers', 'ls', '-q'])).trim().split('\n'), ['db1', 'plain', 'web1']);
  assert.deepEqual((await ok(ns, ['containers', 'ls', '-q', 'labels.tier==web'])).trim().split('\n'), ['web1']);
  assert.deepEqual((await ok(ns, ['containers', 'ls', '-q', 'labels.tier'])).trim().split('\n'), ['db1', 'web1']);
  assert.deepEqual((await ok(ns, ['containers', 'ls', '-q', 'id~=^p', 'labels.tier==db'])).trim().split('\n'), ['db1', 'plain']);
  assert.equal((await ok(ns, ['containers', 'ls', '-q', 'runtime.name==io.containerd.runc.v2,image==nope'])).trim(), '');
  const bad = await stack.ctr(['containers', 'ls', 'labels.tier=='], { namespace: ns });
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /invalid argument/);

  // ctr containers label: an update with the labels.<key> path.
  // (`label` with no labels is an unmasked update, refused by containerd as by us.)
  assert.match(await ok(ns, ['containers', 'label', 'web1', 'color=blue']), /color=blue/);
  // ctr run/create also label the image's stop signal.
  const labels = async () => JSON.parse(await ok(ns, ['containers', 'info', 'web1'])).Labels;
  const stop = { 'io.containerd.image.config.stop-signal': 'SIGTERM' };
  assert.deepEqual(await labels(), { tier: 'web', color: 'blue', ...stop });
  await ok(ns, ['containers', 'label', 'web1', 'color=']);
  assert.deepEqual(await labels(), { tier: 'web', ...stop });
  const unmasked = await stack.ctr(['containers', 'label', 'web1'], { namespace: ns });
  assert.match(unmasked.stderr, /container.Snapshotter field is immutable: invalid argument/);

  const info = JSON.parse(await ok(ns, ['containers', 'info', 'web1']));
  assert.equal(info.ID, 'web1');
  assert.equal(info.Image, image.name);
  assert.equal(info.Runtime.Name, 'io.containerd.runc.v2');
  assert.equal(info.Snapshotter, 'overlayfs');
  assert.equal(info.SnapshotKey, 'web1');
  assert.deepEqual(info.Labels, { tier: 'web', ...stop });
  assert.deepEqual(info.Spec.process.args, ['/bin/sh']); // the image's Cmd

  for (const id of ['web1', 'db1', 'plain']) await ok(ns, ['containers', 'rm', id]);
  assert.equal((await ok(ns, ['containers', 'ls', '-q'])).trim(), '');
  const events = seen.filter((e) => e.namespace === ns);
  for (const [topic, id] of [['/containers/create', 'web1'], ['/containers/update', 'web1'], ['/containers/delete', 'plain']]) {
    assert.ok(events.some((e) => e.topic === topic && e.id === id), `${topic} ${id} missing: ${JSON.stringify(events)}`);
  }
});

test('update masks, extensions, spec and errors as containerd', async (t) => {
  const ns = testNamespace(t.name);
  const base: capi.Container = {
    id: 'u1', labels: { a: '1', b: '2' }, image: 'img', runtime: { name: 'io.containerd.runc.v2', options: undefined }, spec,
    snapshotter: 'native', snapshotKey: 'k1', extensions: { e1: ext('one') }, createdAt: undefined, updatedAt: undefined,
  };
  const created = (await call('Create', C.CreateContainerRequest, C.CreateContainerResponse, { container: base }, ns)).container!;
  assert.ok(created.createdAt && created.updatedAt);
  assert.deepEqual(created.createdAt, created.updatedAt);
  assert.deepEqual((await call('Get', C.GetContainerRequest, C.GetContainerResponse, { id: 'u1' }, ns)).container, created);
  await assert.rejects(call('Create', C.CreateContainerRequest, C.CreateContainerResponse, { container: base }, ns), (e: grpc.ServiceError) =>
    e.code === grpc.status.ALREADY_EXISTS && /container "u1": already exists/.test(e.details));

  // What Update answers is what Get, List and ListStream give from then on (they send the
  // container as stored with the update); created_at stays, updated_at moves.
  let last = created;
  const update = async (c: Partial<capi.Container>, paths: string[]) => {
    await new Promise((r) => setTimeout(r, 2));
    const u = (await call('Update', C.UpdateContainerRequest, C.UpdateContainerResponse, { container: { ...base, ...c }, updateMask: paths }, ns)).container!;
    assert.deepEqual((await call('Get', C.GetContainerRequest, C.GetContainerResponse, { id: 'u1' }, ns)).container, u);
    assert.deepEqual((await call('List', C.ListContainersRequest, C.ListContainersResponse, {}, ns)).containers, [u]);
    assert.deepEqual(await listStream(ns), [u]);
    assert.deepEqual(u.createdAt, created.createdAt);
    assert.ok(u.updatedAt!.seconds * 1e9 + u.updatedAt!.nanos > last.updatedAt!.seconds * 1e9 + last.updatedAt!.nanos);
    last = u;
    return u;
  };

  // One label set, one removed, one extension replaced; nothing else changes.
  let u = await update({ labels: { a: 'x' }, extensions: { e1: ext('uno'), e2: ext('two') }, image: 'other' }, ['labels.a', 'labels.b', 'extensions.e2']);
  assert.deepEqual(u.labels, { a: 'x' });
  assert.deepEqual(Object.keys(u.extensions).sort(), ['e1', 'e2']);
  assert.equal(Buffer.from(u.extensions.e1!.value).toString(), 'one');
  assert.equal(u.image, 'img');
  // Whole fields by name.
  const spec2 = { typeUrl: spec.typeUrl, value: Buffer.from('{"ociVersion":"1.1.0"}') };
  u = await update({ image: 'img2', spec: spec2, snapshotKey: 'k2' }, ['image', 'spec', 'snapshotkey']);
  assert.deepEqual([u.image, Buffer.from(u.spec!.value).toString(), u.snapshotKey], ['img2', '{"ociVersion":"1.1.0"}', 'k2']);
  // No mask: a full replace, but the runtime and snapshotter are immutable.
  u = await update({ labels: { only: 'this' }, extensions: {}, image: 'img3', snapshotKey: 'k3', spec }, []);
  assert.deepEqual([u.labels, u.extensions, u.image, u.snapshotKey], [{ only: 'this' }, {}, 'img3', 'k3']);
  const invalid = (re: RegExp) => (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && re.test(e.details);
  await assert.rejects(update({ snapshotter: 'overlayfs' }, []), invalid(/container.Snapshotter field is immutable/));
  await assert.rejects(update({ runtime: { name: 'io.containerd.other.v1', options: undefined } }, []), invalid(/container.Runtime.Name field is immutable/));
  await assert.rejects(update({}, ['runtime']), invalid(/cannot update "runtime" field on "u1"/));
  await assert.rejects(update({ spec: undefined }, ['spec']), invalid(/update failed validation: container.Spec must be set/));
  await assert.rejects(update({ id: 'nope' }, ['image']), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
  const listed = (await call('List', C.ListContainersRequest, C.ListContainersResponse, { filters: ['labels.only==this'] }, ns)).containers;
  assert.deepEqual(listed.map((c) => c.id), ['u1']);

  await assert.rejects(call('Create', C.CreateContainerRequest, C.CreateContainerResponse, { container: { ...base, id: 'u2', spec: undefined } }, ns),
    invalid(/create container failed validation: container.Spec must be set/));
  await assert.rejects(call('Create', C.CreateContainerRequest, C.CreateContainerResponse, { container: { ...base, id: 'u2', snapshotter: '' } }, ns),
    invalid(/container.Snapshotter must be set if container.SnapshotKey is set/));
  await call('Delete', C.DeleteContainerRequest, { decode: () => ({}) } as any, { id: 'u1' }, ns);
  await assert.rejects(call('Get', C.GetContainerRequest, C.GetContainerResponse, { id: 'u1' }, ns), (e: grpc.ServiceError) =>
    e.code === grpc.status.NOT_FOUND && e.details === `container "u1" in namespace "${ns}": not found`);
  const updates = seen.filter((e) => e.namespace === ns && e.topic === '/containers/update');
  assert.equal(updates.length, 3);
  assert.deepEqual(updates[2]!.labels, { only: 'this' });
});
