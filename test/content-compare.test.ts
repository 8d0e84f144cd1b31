// The content service against Debian's containerd: the same real-ctr commands
// (`ctr content ingest / ls / get / rm / label / active`) and the same raw gRPC calls
// (bad input of every kind) on both sides must give the same answers: exit codes and
// outputs after normalising ages and label order; gRPC codes, messages and replies
// after normalising timestamps.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { content as api, Empty } from '@flotilla/api';
import { startReferenceContainerd, startStack, testNamespace, type CtrResult, type Reference, type Stack } from '@flotilla/testing';

let stack: Stack;
let ref: Reference;

before(async () => {
  ref = await startReferenceContainerd();
  stack = await startStack();
});

after(async () => {
  await stack?.stop();
  await ref?.stop();
});

const sha = (b: Uint8Array) => 'sha256:' + createHash('sha256').update(b).digest('hex');

/** ctr output with what legitimately differs removed: ages, column padding, label order. */
function norm(r: CtrResult): { code: number; stdout: string; stderr: string } {
  const line = (l: string) =>
    l
      .replace(/Less than a second|About a minute|\d+ (?:seconds?|minutes?)/g, 'AGE')
      .split(/[\t ]+/)
      .map((tok) => (tok.includes('=') ? tok.split(',').sort().join(',') : tok))
      .join(' ')
      .trim();
  return {
    code: r.code,
    stdout: r.stdout.split('\n').map(line).join('\n'),
    stderr: r.stderr.replace(/time="[^"]*"/g, 'time=T').split('\n').map(line).join('\n'),
  };
}

test('ctr content ingest / ls / get / label / active / rm answer as containerd does', { timeout: 5 * 60_000 }, async (t) => {
  const ns = testNamespace(t.name);
  const blob = randomBytes(5000);
  const dgst = sha(blob);
  const other = randomBytes(300);
  const steps: [string[], Uint8Array?][] = [
    [['content', 'ingest', '--expected-size', '5000', '--expected-digest', dgst, 'ref1'], blob],
    [['content', 'ingest', '--expected-size', '5000', '--expected-digest', dgst, 'ref1'], blob],
    [['content', 'ls']],
    [['content', 'ls', '-q']],
    [['content', 'label', dgst, 'a=b', 'c=d']],
    [['content', 'label', dgst, 'a=']],
    [['content', 'label', dgst]],
    [['content', 'ls', 'labels.c==d']],
    [['content', 'ls', 'labels.c==x']],
    [['content', 'ls', `digest==${dgst}`]],
    [['content', 'ls', 'labels.c==']],
    // An ingest cut short stays active; a size overrun and a wrong digest fail the commit.
    [['content', 'ingest', '--expected-size', '200', 'short'], other.subarray(0, 100)],
    [['content', 'ingest', '--expected-size', '200', 'overrun'], other],
    [['content', 'ingest', '--expected-digest', sha(blob.subarray(0, 10)), 'wrongdigest'], other],
    [['content', 'active']],
    [['content', 'active', 'short']],
    [['content', 'active', 're[f']],
    [['content', 'ls', '-q']],
    [['content', 'get', sha(other)]],
    [['content', 'get', 'sha256:abc']],
    [['content', 'rm', dgst]],
    [['content', 'rm', dgst]],
    [['content', 'rm', 'sha256:abc']],
    [['content', 'ls', '-q']],
    [['content', 'label', dgst, 'x=y']],
  ];
  for (const [args, input] of steps) {
    const [want, got] = [norm(await ref.ctr(args, { namespace: ns, input })), norm(await stack.ctr(args, { namespace: ns, input }))];
    // containerd lists active ingests in Go map order: compare them as a set.
    if (args[1] === 'active') for (const r of [want, got]) r.stdout = r.stdout.split('\n').sort().join('\n');
    assert.deepEqual(got, want, `ctr ${args.join(' ')}`);
  }
  // Nothing that failed verification is visible; what was written reads back whole.
  await stack.ctr(['content', 'ingest', 'again'], { namespace: ns, input: blob });
  const get = await stack.ctr(['content', 'get', dgst], { namespace: ns });
  assert.equal(get.code, 0, get.stderr);
  assert.ok(get.stdoutBytes.equals(blob));
  assert.equal((await stack.ctr(['content', 'ls', '-q'], { namespace: ns })).stdout.trim(), dgst);
});

// ---- raw gRPC: the same calls on both sides ----

type Answer = { code: number; details: string; replies: unknown[] };
const SVC = '/containerd.services.content.v1.Content/';

class Wire {
  readonly client: grpc.Client;
  constructor(socket: string) {
    this.client = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 64 << 20 });
  }
  private md(ns: string): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set('containerd-namespace', ns);
    return md;
  }
  unary<Q, R>(method: string, q: { encode(m: Q): { finish(): Uint8Array }; fromPartial(p: any): Q }, r: { decode(b: Uint8Array): R }, req: Partial<Q>, ns: string): Promise<Answer> {
    return new Promise((resolve) => {
      this.client.makeUnaryRequest(SVC + method, (m: Q) => Buffer.from(q.encode(m).finish()), (b: Buffer) => r.decode(b), q.fromPartial(req), this.md(ns), (err, res) =>
        resolve(err ? { code: err.code, details: err.details, replies: [] } : { code: 0, details: '', replies: [res] }),
      );
    });
  }
  stream<Q, R>(method: string, q: { encode(m: Q): { finish(): Uint8Array }; fromPartial(p: any): Q }, r: { decode(b: Uint8Array): R }, req: Partial<Q>, ns: string): Promise<Answer> {
    return new Promise((resolve) => {
      const replies: unknown[] = [];
      const call = this.client.makeServerStreamRequest(SVC + method, (m: Q) => Buffer.from(q.encode(m).finish()), (b: Buffer) => r.decode(b), q.fromPartial(req), this.md(ns));
      call.on('data', (d) => replies.push(d));
      call.on('error', () => {});
      call.on('status', (s) => resolve({ code: s.code, details: s.code ? s.details : '', replies }));
    });
  }
  /** A Write stream: one request, then its reply, as containerd's remote writer does. */
  writer(ns: string) {
    const call = this.client.makeBidiStreamRequest(
      SVC + 'Write',
      (m: api.WriteContentRequest) => Buffer.from(api.WriteContentRequest.encode(m).finish()),
      (b: Buffer) => api.WriteContentResponse.decode(b),
      this.md(ns),
    );
    const queue: api.WriteContentResponse[] = [];
    let waiting: (() => void) | undefined;
    let status: grpc.StatusObject | undefined;
    call.on('data', (d: api.WriteContentResponse) => {
      queue.push(d);
      waiting?.();
    });
    call.on('error', () => {});
    call.on('status', (s) => {
      status = s;
      waiting?.();
    });
    return {
      /** The reply to `req`, or the stream's status when it ended instead. */
      send: async (req: Partial<api.WriteContentRequest>): Promise<Answer> => {
        call.write(api.WriteContentRequest.fromPartial(req));
        while (queue.length === 0 && (!status || status.code === 0)) await new Promise<void>((r) => (waiting = r));
        const reply = queue.shift();
        if (reply) return { code: 0, details: '', replies: [reply] };
        return { code: status!.code, details: status!.details, replies: [] };
      },
      close: () => call.end(),
    };
  }
}

/** Timestamps differ by nature: keep only whether they are set. */
function stamps(a: Answer): Answer {
  // containerd's lock message names its internal ingest key and the time held.
  const lockMsg = (x: string) => x.replace(/^ref \S+ locked for .*: unavailable$/, 'ref <ref> locked: unavailable');
  const strip = (v: unknown): unknown => {
    if (typeof v === 'string') return lockMsg(v);
    if (Array.isArray(v)) return v.map(strip);
    if (v && typeof v === 'object' && !Buffer.isBuffer(v)) {
      // Go's zero time stays visible: it is what containerd sends before a stamp exists.
      const at = (x: any) => (!x ? 'unset' : x.seconds === -62135596800 ? 'zero' : 'set');
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, /At$/.test(k) ? at(x) : strip(x)]));
    }
    return v;
  };
  // containerd lists active ingests in Go map order: compare them sorted by ref.
  for (const r of a.replies as { statuses?: api.Status[] }[]) r?.statuses?.sort((x, y) => x.ref.localeCompare(y.ref));
  return { ...a, details: lockMsg(a.details), replies: strip(a.replies) as unknown[] };
}

test('content gRPC answers, bad input included, are containerd\'s', { timeout: 5 * 60_000 }, async (t) => {
  const ns = testNamespace(t.name);
  const sides = { containerd: new Wire(ref.socket), flotilla: new Wire(stack.socket) };
  const blob = randomBytes(3 << 20); // more than one NATS payload, in one gRPC message
  const dgst = sha(blob);
  const small = randomBytes(1000);
  const absent = sha(Buffer.from('absent'));
  type Call = (w: Wire) => Promise<Answer>;
  const same = async (what: string, call: Call) => {
    const [want, got] = [stamps(await call(sides.containerd)), stamps(await call(sides.flotilla))];
    assert.deepEqual(got, want, what);
    return got;
  };
  const I = api.InfoRequest, IR = api.InfoResponse;

  // A committed blob: written in one 3 MiB message, committed with labels.
  await same('write+commit', async (w) => {
    const wr = w.writer(ns);
    const out: Answer[] = [];
    out.push(await wr.send({ action: api.WriteAction.STAT, ref: 'big', total: blob.length, expected: dgst }));
    out.push(await wr.send({ action: api.WriteAction.WRITE, offset: 0, data: blob }));
    out.push(await wr.send({ action: api.WriteAction.COMMIT, offset: blob.length, total: blob.length, expected: dgst, labels: { 'containerd.io/gc.root': 'x', k: 'v' } }));
    wr.close();
    return { code: 0, details: '', replies: out.flatMap((a) => [a.code, a.details, ...a.replies]) };
  });
  await same('info', (w) => w.unary('Info', I, IR, { digest: dgst }, ns));
  await same('info missing', (w) => w.unary('Info', I, IR, { digest: absent }, ns));
  await same('info invalid digest', (w) => w.unary('Info', I, IR, { digest: 'sha256:abc' }, ns));
  await same('info bad algorithm', (w) => w.unary('Info', I, IR, { digest: 'md5:abc' }, ns));
  await same('info no namespace', (w) => w.unary('Info', I, IR, { digest: dgst }, ''));
  await same('list', (w) => w.stream('List', api.ListContentRequest, api.ListContentResponse, {}, ns));
  await same('list filter', (w) => w.stream('List', api.ListContentRequest, api.ListContentResponse, { filters: ['labels.k==v', 'digest==nothing'] }, ns));
  await same('list bad filter', (w) => w.stream('List', api.ListContentRequest, api.ListContentResponse, { filters: ['labels.k=='] }, ns));
  const U = api.UpdateRequest, UR = api.UpdateResponse;
  await same('update labels.k', (w) => w.unary('Update', U, UR, { info: { digest: dgst, labels: { k: 'w', z: 'ignored' } } as unknown as api.Info, updateMask: ['labels.k'] }, ns));
  await same('update remove label', (w) => w.unary('Update', U, UR, { info: { digest: dgst, labels: {} } as unknown as api.Info, updateMask: ['labels.k'] }, ns));
  await same('update bad path', (w) => w.unary('Update', U, UR, { info: { digest: dgst, labels: {} } as unknown as api.Info, updateMask: ['size'] }, ns));
  await same('update label too big', (w) => w.unary('Update', U, UR, { info: { digest: dgst, labels: { big: 'x'.repeat(4094) } } as unknown as api.Info, updateMask: ['labels'] }, ns));
  await same('update missing', (w) => w.unary('Update', U, UR, { info: { digest: absent, labels: {} } as unknown as api.Info }, ns));
  await same('update invalid', (w) => w.unary('Update', U, UR, { info: { digest: 'nope', labels: {} } as unknown as api.Info }, ns));
  const R = api.ReadContentRequest, RR = api.ReadContentResponse;
  const read = async (w: Wire, req: Partial<api.ReadContentRequest>) => {
    const a = await w.stream('Read', R, RR, req, ns);
    // Chunking is the server's choice; the bytes at their offsets are the contract.
    const data = Buffer.concat((a.replies as api.ReadContentResponse[]).map((r) => r.data));
    const first = (a.replies as api.ReadContentResponse[])[0]?.offset ?? -1;
    return { code: a.code, details: a.details, replies: [first, data.length, sha(data)] };
  };
  await same('read whole', (w) => read(w, { digest: dgst }));
  await same('read range', (w) => read(w, { digest: dgst, offset: 1_500_000, size: 1_000_000 }));
  await same('read past size', (w) => read(w, { digest: dgst, offset: blob.length - 10, size: 100 }));
  await same('read at end', (w) => read(w, { digest: dgst, offset: blob.length }));
  await same('read past end', (w) => read(w, { digest: dgst, offset: blob.length + 1 }));
  await same('read negative offset', (w) => read(w, { digest: dgst, offset: -5, size: 10 }));
  await same('read missing', (w) => read(w, { digest: absent }));
  await same('read invalid', (w) => read(w, { digest: 'sha256:zz' }));
  const S = api.StatusRequest, SR = api.StatusResponse;
  await same('status unknown ref', (w) => w.unary('Status', S, SR, { ref: 'nope' }, ns));
  await same('abort unknown ref', (w) => w.unary('Abort', api.AbortRequest, Empty, { ref: 'nope' }, ns));
  await same('list statuses bad filter', (w) => w.unary('ListStatuses', api.ListStatusesRequest, api.ListStatusesResponse, { filters: ['ref=='] }, ns));

  // Write protocol errors.
  const seq = async (w: Wire, reqs: Partial<api.WriteContentRequest>[], keepOpen = false) => {
    const wr = w.writer(ns);
    const out: unknown[] = [];
    for (const q of reqs) {
      const a = await wr.send(q);
      out.push(a.code, a.details, ...a.replies);
      if (a.code) break;
    }
    if (!keepOpen) wr.close();
    return { code: 0, details: '', replies: out, wr };
  };
  const plain = (p: Promise<Answer & { wr?: unknown }>) => p.then(({ code, details, replies }) => ({ code, details, replies }));
  const WA = api.WriteAction;
  await same('write without ref', (w) => plain(seq(w, [{ action: WA.STAT }])));
  await same('write at a wrong offset', (w) => plain(seq(w, [{ action: WA.STAT, ref: 'off' }, { action: WA.WRITE, offset: 0, data: small.subarray(0, 10) }, { action: WA.WRITE, offset: 50, data: small.subarray(10, 20) }])));
  await same('status of the ingest', (w) => w.unary('Status', S, SR, { ref: 'off' }, ns));
  await same('list statuses', (w) => w.unary('ListStatuses', api.ListStatusesRequest, api.ListStatusesResponse, { filters: ['ref==off'] }, ns));
  await same('resume and restart at 0', (w) => plain(seq(w, [{ action: WA.STAT, ref: 'off' }, { action: WA.WRITE, offset: 0, data: small.subarray(0, 4) }, { action: WA.WRITE, offset: 4, data: small.subarray(4, 8) }])));
  await same('commit wrong size', (w) => plain(seq(w, [{ action: WA.STAT, ref: 'off' }, { action: WA.COMMIT, offset: 8, total: 9 }])));
  await same('commit wrong digest', (w) => plain(seq(w, [{ action: WA.STAT, ref: 'off' }, { action: WA.COMMIT, offset: 8, total: 8, expected: absent }])));
  await same('commit nothing visible', (w) => w.stream('List', api.ListContentRequest, api.ListContentResponse, {}, ns));
  await same('open with existing digest', (w) => plain(seq(w, [{ action: WA.STAT, ref: 'dup', expected: dgst }])));
  await same('commit expecting existing digest', (w) => plain(seq(w, [{ action: WA.STAT, ref: 'dup2' }, { action: WA.WRITE, offset: 0, data: small }, { action: WA.COMMIT, offset: small.length, expected: dgst }])));
  await same('dup2 aborted', (w) => w.unary('Status', S, SR, { ref: 'dup2' }, ns));
  await same('commit existing content without digest', (w) => plain(seq(w, [{ action: WA.STAT, ref: 'dup3' }, { action: WA.WRITE, offset: 0, data: blob }, { action: WA.COMMIT, offset: blob.length }])));
  await same('invalid expected digest', (w) => plain(seq(w, [{ action: WA.STAT, ref: 'inv', expected: 'sha256:123' }])));
  await same('label too big at commit', (w) => plain(seq(w, [{ action: WA.STAT, ref: 'lbl' }, { action: WA.WRITE, offset: 0, data: small }, { action: WA.COMMIT, offset: small.length, labels: { k: 'v'.repeat(5000) } }])));
  await same('unknown action', (w) => plain(seq(w, [{ action: 7 as api.WriteAction, ref: 'act' }])));
  // A second writer on a held ref is Unavailable (clients retry).
  await same('ref held by another writer', async (w) => {
    const first = await seq(w, [{ action: WA.STAT, ref: 'held' }], true);
    const second = await plain(seq(w, [{ action: WA.STAT, ref: 'held' }]));
    first.wr.close();
    return { code: 0, details: '', replies: [...first.replies, second] };
  });
  await same('abort', (w) => w.unary('Abort', api.AbortRequest, Empty, { ref: 'off' }, ns));
  await same('statuses after abort', (w) => w.unary('ListStatuses', api.ListStatusesRequest, api.ListStatusesResponse, {}, ns));
  await same('delete invalid', (w) => w.unary('Delete', api.DeleteContentRequest, Empty, { digest: 'sha256:xyz' }, ns));
  await same('delete', (w) => w.unary('Delete', api.DeleteContentRequest, Empty, { digest: dgst }, ns));
  await same('delete again', (w) => w.unary('Delete', api.DeleteContentRequest, Empty, { digest: dgst }, ns));
  for (const w of Object.values(sides)) w.client.close();
});
