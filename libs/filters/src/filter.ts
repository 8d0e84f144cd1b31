// The filter model: a filter is an OR of ANDs of selectors; each selector looks one
// field path up through an adaptor that the caller writes for its object type.

/**
 * Maps a field path (already split on `.` and unquoted) to the object's value, and
 * whether the field is present. Absent fields compare as the empty string for `!=`
 * and `~=`, as in containerd.
 */
export interface Adaptor {
  field(path: readonly string[]): [value: string, present: boolean];
}
export type AdaptorFn = (path: readonly string[]) => [value: string, present: boolean];

export type Operator = '?' | '==' | '!=' | '~=';

export interface Selector {
  readonly fieldpath: readonly string[];
  readonly operator: Operator;
  readonly value: string;
}

export interface Filter {
  /** True when the object seen through `a` passes. */
  match(a: Adaptor | AdaptorFn): boolean;
  /** The parsed structure (OR of ANDs), for callers that want to push parts into SQL. */
  readonly alternatives: readonly (readonly Selector[])[];
}

/** An adaptor from a function. */
export function adaptor(fn: AdaptorFn): Adaptor {
  return { field: fn };
}

/**
 * containerd's checkMap: the rest of the path joined by `.` is one key, so
 * `labels.io.example.x` and `labels."io.example.x"` look up the same key.
 */
export function checkMap(rest: readonly string[], m: Record<string, string> | undefined): [string, boolean] {
  if (!m) return ['', false];
  const k = rest.join('.');
  return Object.prototype.hasOwnProperty.call(m, k) ? [m[k]!, true] : ['', false];
}

export class CompiledSelector implements Selector {
  // An unparsable regular expression matches nothing (containerd logs and returns false).
  private readonly re: RegExp | null;
  constructor(readonly fieldpath: readonly string[], readonly operator: Operator, readonly value: string) {
    let re: RegExp | null = null;
    if (operator === '~=') {
      try {
        re = new RegExp(value, 'u');
      } catch {
        try {
          re = new RegExp(value);
        } catch {
          re = null;
        }
      }
    }
    this.re = re;
  }

  match(a: Adaptor): boolean {
    const [value, present] = a.field(this.fieldpath);
    switch (this.operator) {
      case '?':
        return present;
      case '==':
        return present && value === this.value;
      case '!=':
        return value !== this.value;
      case '~=':
        return this.re !== null && this.re.test(value);
    }
  }
}

export class FilterImpl implements Filter {
  constructor(readonly alternatives: readonly (readonly CompiledSelector[])[]) {}
  match(a: Adaptor | AdaptorFn): boolean {
    const ad = typeof a === 'function' ? adaptor(a) : a;
    // No alternatives at all means no filter was given: everything matches.
    if (this.alternatives.length === 0) return true;
    return this.alternatives.some((all) => all.every((s) => s.match(ad)));
  }
}
