// @flotilla/filters: containerd's filter language (filters/ in containerd), used by
// every List and by events Subscribe.

/** Parsing: `parseFilters(["a==b,c", "d~=x"])` is (a==b AND c) OR (d~=x). */
export { parseFilter, parseFilters, ALWAYS } from './parser.js';
export type { ParseOptions } from './parser.js';
/** A parsed filter and the adaptor interface each List implements for its objects. */
export type { Filter, Adaptor, AdaptorFn, Operator, Selector } from './filter.js';
/** Adaptor helpers: map lookups (`labels.<key>`) as containerd's checkMap does. */
export { adaptor, checkMap } from './filter.js';
