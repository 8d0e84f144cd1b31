import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseFilter, parseFilters, checkMap, type AdaptorFn } from '@flotilla/filters';
import { ErrorClass, classOf } from '@flotilla/errdefs';

interface Entry { name: string; other?: string; labels?: Record<string, string> }

const corpus: Entry[] = [
  { name: 'foo', labels: { foo: 'true' } },
  { name: 'bar' },
  { name: 'foo', labels: { foo: 'present', 'more complex label': 'present' } },
  { name: 'bar', labels: { bar: 'true' } },
  { name: 'fooer', labels: { 'more complex label with \\ and "': 'present' } },
  { name: 'fooer', labels: { 'more complex label with \\ and ".post': 'present' } },
  { name: 'baz', other: 'too complex, yo' },
  { name: 'bazo', other: 'abc' },
  { name: 'compound', labels: { foo: 'omg_asdf.asdf-qwer' } },
];

const adapt = (e: Entry): AdaptorFn => (path) => {
  switch (path[0]) {
    case 'name': return [e.name, e.name.length > 0];
    case 'other': return [e.other ?? '', !!e.other];
    case 'labels': return checkMap(path.slice(1), e.labels);
  }
  return ['', false];
};

const ALL = corpus.map((_, i) => i);

// [input, indices of the corpus that match] or [input, error text]
const cases: [string, number[] | string][] = [
  ['', ALL],
  ['name', ALL],
  ['labels.foo', [0, 2, 8]],
  ['labels.foo,name', [0, 2, 8]],
  ['labels.foo==true', [0]],
  ['labels.foo==omg_asdf.asdf-qwer', [8]],
  ['labels.|foo|==omg_asdf.asdf-qwer', 'filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered'],
  ['name==bar', [1, 3]],
  ['name!=bar', [0, 2, 4, 5, 6, 7, 8]],
  ['name==bar,labels.bar', [3]],
  ['other=="too complex, yo"', [6]],
  ['other~=[abc]+,name!=foo', [6, 7]],
  ['other~=/[abc]+/,name!=foo', [6, 7]],
  ['other~=/[abc]{1,2}/,name!=foo', [6, 7]],
  ['other~=/[abc]{0,1}"\\//,name!=foo', []],
  ['other~=|^abc$|', [7]],
  ['name==bar,labels.bar==true', [3]],
  ['name==bar,labels.bar==wrong', []],
  ['name==foo,labels."more complex label"', [2]],
  ['labels."more complex label with \\\\ and \\""==present', [4]],
  ['labels."more complex label with \\\\ and \\"".post==present', [5]],
  ['labels.?"more complex label with \\\\ and \\"".post==present', 'filters: parse error: [labels. >|?|< "more complex label with \\\\ and \\"".post==present]: expected field or quoted'],
  ['name==foo,', 'filters: parse error: [name==foo,]: expected field or quoted'],
  ['labels.', 'filters: parse error: [labels.]: expected field or quoted'],
  ['image~=,id?=?fbaq', 'filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted'],
  ['labels.ns/key==value', 'filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated'],
  ['labels.key==/value', 'filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated'],
  // Beyond containerd's own table (texts checked against containerd's Go parser):
  // operators, escapes, spaces and stray input.
  ['name===bar', 'filters: parse error: [name >|=|< ==bar]: unsupported operator "==="'],
  ['name=bar', 'filters: parse error: [name >|=|< bar]: unsupported operator "="'],
  ['name == bar', [1, 3]],
  ['name==bar extra', 'filters: parse error: [name==bar >| |< extra]: unexpected input:  '],
  ['name==/bar/', 'filters: parse error: [name== >|/|< bar/]: invalid quote encountered'],
  ['labels."foo"=="tr\\x75e"', [0]],
  ['labels."foo"=="tr\\165e"', [0]],
  ['labels."foo"=="tr\\u0075e"', [0]],
  ['labels."foo"=="bad\\q"', 'filters: parse error: [labels."foo"== >|"|< bad\\q"]: illegal escape sequence'],
  ['name~=[', []], // containerd: an invalid regexp matches nothing
  ['name!=', 'filters: parse error: [name!=]: expected value or quoted'],
];

for (const [input, want] of cases) {
  test(`filter ${JSON.stringify(input)}`, () => {
    if (typeof want === 'string') {
      assert.throws(() => parseFilters([input]), (e) => {
        assert.equal(classOf(e), ErrorClass.InvalidArgument);
        assert.equal((e as Error).message, `${want}: invalid argument`);
        return true;
      });
      return;
    }
    const f = parseFilter(input);
    const got = corpus.map((e, i) => (f.match(adapt(e)) ? i : -1)).filter((i) => i >= 0);
    assert.deepEqual(got, want);
  });
}

test('several filters are OR-ed; none or an empty one matches everything', () => {
  const match = (fs: string[]) => corpus.map((e, i) => (parseFilters(fs).match(adapt(e)) ? i : -1)).filter((i) => i >= 0);
  assert.deepEqual(match(['name==bar', 'labels.foo==true']), [0, 1, 3]);
  assert.deepEqual(match(['name==nothing', 'other==abc']), [7]);
  assert.deepEqual(match([]), ALL);
  assert.deepEqual(match(['name==nothing', '']), ALL);
  assert.throws(() => parseFilters(['name==bar', 'labels.']), (e) => classOf(e) === ErrorClass.InvalidArgument);
});

test('the parsed structure is exposed for callers that push selectors into SQL', () => {
  const f = parseFilters(['name==a,labels."x.y"~=z', 'id']);
  assert.deepEqual(f.alternatives.map((all) => all.map((s) => [s.fieldpath, s.operator, s.value])), [
    [[['name'], '==', 'a'], [['labels', 'x.y'], '~=', 'z']],
    [[['id'], '?', '']],
  ]);
});

test('wrapAgain says what containerd image, container and lease stores say', () => {
  assert.throws(() => parseFilters(['labels.'], { wrapAgain: true }), (e) => {
    assert.equal(classOf(e), ErrorClass.InvalidArgument);
    assert.equal((e as Error).message, 'filters: parse error: [labels.]: expected field or quoted: invalid argument: invalid argument');
    return true;
  });
});
