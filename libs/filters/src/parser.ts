// containerd's filter grammar (filters/parser.go), with the same error texts:
//
//   selectors := selector ("," selector)*
//   selector  := fieldpath (operator value)?      -- no operator: "field is present"
//   fieldpath := field ("." field)*
//   field     := quoted | [A-Za-z0-9_]+
//   operator  := "==" | "!=" | "~="
//   value     := quoted | [^\s,]+
//   quoted    := "..." (Go string syntax); a ~= value may also be quoted by /.../ or |...|
//
// Several filter strings are OR-ed (containerd's ParseAll); a parse failure is
// InvalidArgument with containerd's message.
import { errInvalidArgument } from '@flotilla/errdefs';
import { CompiledSelector, FilterImpl, type Filter, type Operator } from './filter.js';

const EOF = -1;
const QUOTED = -2;
const VALUE = -3;
const FIELD = -4;
const SEPARATOR = -5;
const OPERATOR = -6;
const ILLEGAL = -7;

const SPACE = /^\p{White_Space}$/u;
const VALUE_RUNE = /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u;

const isFieldRune = (c: number) => c === 0x5f || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39);
const isOperatorRune = (c: number) => c === 0x3d || c === 0x21 || c === 0x7e; // = ! ~
const isQuoteRune = (c: number) => c === 0x2f || c === 0x7c || c === 0x22; // / | "
const isSeparatorRune = (c: number) => c === 0x2c || c === 0x2e; // , .
const isSpace = (c: number) => c >= 0 && SPACE.test(String.fromCodePoint(c));
const isValueRune = (c: number) => c >= 0 && c !== 0x2c && !isSpace(c) && VALUE_RUNE.test(String.fromCodePoint(c));

function digitVal(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return 16;
}

/** A tokenizer over code points; positions are string indices. */
class Scanner {
  pos = 0; // start of the current rune
  ppos = 0; // end of the current rune
  value = false; // after an operator, the next bare word is a value
  err = '';
  constructor(readonly input: string) {}

  next(): number {
    if (this.pos >= this.input.length) return EOF;
    this.pos = this.ppos;
    if (this.ppos >= this.input.length) return EOF;
    const c = this.input.codePointAt(this.ppos)!;
    this.ppos += c > 0xffff ? 2 : 1;
    if (c >= 0xd800 && c <= 0xdfff) return this.error('rune error'), ILLEGAL;
    if (c === 0) return this.error('unexpected null'), ILLEGAL;
    return c;
  }

  peek(): number {
    const { pos, ppos } = this;
    const c = this.next();
    this.pos = pos;
    this.ppos = ppos;
    return c;
  }

  scan(): [pos: number, token: number, text: string] {
    let c = this.next();
    let pos = this.pos;
    for (;;) {
      if (c === EOF || c === ILLEGAL) break;
      if (isQuoteRune(c)) {
        const ok = this.scanQuoted(c);
        return [pos, ok ? QUOTED : ILLEGAL, this.input.slice(pos, this.ppos)];
      }
      if (isSeparatorRune(c)) {
        this.value = false;
        return [pos, SEPARATOR, this.input.slice(pos, this.ppos)];
      }
      if (isOperatorRune(c)) {
        while (isOperatorRune(this.peek())) this.next();
        this.value = true;
        return [pos, OPERATOR, this.input.slice(pos, this.ppos)];
      }
      if (isSpace(c)) {
        c = this.next();
        pos = this.pos;
        continue;
      }
      if (this.value) {
        while (isValueRune(this.peek())) this.next();
        this.value = false;
        return [pos, VALUE, this.input.slice(pos, this.ppos)];
      }
      if (isFieldRune(c)) {
        while (isFieldRune(this.peek())) this.next();
        return [pos, FIELD, this.input.slice(pos, this.ppos)];
      }
      break;
    }
    return [this.pos, c, ''];
  }

  private scanQuoted(quote: number): boolean {
    let illegal = false;
    let c = this.next();
    while (c !== quote) {
      if (c === 0x0a || c < 0) {
        this.error('quoted literal not terminated');
        return false;
      }
      if (c === 0x5c) {
        let legal: boolean;
        [c, legal] = this.scanEscape(quote);
        if (!legal) illegal = true;
      } else c = this.next();
    }
    return !illegal;
  }

  private scanEscape(quote: number): [number, boolean] {
    const c = this.next();
    switch (c) {
      case 0x61: case 0x62: case 0x66: case 0x6e: case 0x72: case 0x74: case 0x76: case 0x5c: case quote:
        return [this.next(), true];
      case 0x78: return this.scanDigits(this.next(), 16, 2);
      case 0x75: return this.scanDigits(this.next(), 16, 4);
      case 0x55: return this.scanDigits(this.next(), 16, 8);
    }
    if (c >= 0x30 && c <= 0x37) return this.scanDigits(c, 8, 3);
    this.error('illegal escape sequence');
    return [c, false];
  }

  private scanDigits(c: number, base: number, n: number): [number, boolean] {
    while (n > 0 && digitVal(c) < base) {
      c = this.next();
      n--;
    }
    if (n > 0) {
      this.error('illegal numeric escape sequence');
      return [c, false];
    }
    return [c, true];
  }

  private error(msg: string): void {
    if (!this.err) this.err = msg;
  }
}

class ParseError extends Error {
  constructor(input: string, pos: number, msg: string) {
    const where = pos < input.length ? `${input.slice(0, pos)} >|${input[pos]}|< ${input.slice(pos + 1)}` : input;
    super(`filters: parse error: [${where}]: ${msg}`);
  }
}

/** Go's strconv.Unquote, extended (as containerd's) to `/` and `|` as double quotes. */
function unquote(s: string): string | null {
  const n = s.length;
  if (n < 2) return null;
  const q = s[0]!;
  if (q !== s[n - 1] || !'"|/'.includes(q)) return null;
  s = s.slice(1, n - 1);
  if (s.includes('\n')) return null;
  if (!s.includes('\\') && !s.includes(q)) return s;
  const out: number[] = [];
  const utf8 = (cp: number) => out.push(...Buffer.from(String.fromCodePoint(cp), 'utf8'));
  let i = 0;
  while (i < s.length) {
    const c = s[i]!;
    if (c === q) return null;
    if (c !== '\\') {
      const cp = s.codePointAt(i)!;
      utf8(cp);
      i += cp > 0xffff ? 2 : 1;
      continue;
    }
    if (i + 1 >= s.length) return null;
    const e = s[i + 1]!;
    i += 2;
    const simple: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, '\\': 92 };
    if (e in simple) out.push(simple[e]!);
    else if (e === 'x' || e === 'u' || e === 'U') {
      const len = e === 'x' ? 2 : e === 'u' ? 4 : 8;
      const hex = s.slice(i, i + len);
      if (hex.length < len || !/^[0-9a-fA-F]+$/.test(hex)) return null;
      i += len;
      const v = parseInt(hex, 16);
      if (e === 'x') out.push(v); // one byte, possibly not UTF-8
      else if (v > 0x10ffff) return null;
      else utf8(v >= 0xd800 && v <= 0xdfff ? 0xfffd : v);
    } else if (e >= '0' && e <= '7') {
      const oct = e + s.slice(i, i + 2);
      if (!/^[0-7]{3}$/.test(oct)) return null;
      i += 2;
      const v = parseInt(oct, 8);
      if (v > 255) return null;
      out.push(v);
    } else if ('\'"|/'.includes(e)) {
      if (e !== q) return null;
      out.push(e.charCodeAt(0));
    } else return null;
  }
  return Buffer.from(out).toString('utf8');
}

class Parser {
  private readonly sc: Scanner;
  constructor(private readonly input: string) {
    this.sc = new Scanner(input);
  }

  private err(pos: number, msg: string): ParseError {
    return new ParseError(this.input, pos, msg);
  }

  selectors(): CompiledSelector[] {
    const all = [this.selector()];
    for (;;) {
      const c = this.sc.peek();
      if (c === EOF) return all;
      if (c !== 0x2c) throw this.err(this.sc.ppos, `unexpected input: ${String.fromCodePoint(Math.max(c, 0))}`);
      this.sc.scan();
      all.push(this.selector());
    }
  }

  private selector(): CompiledSelector {
    const fieldpath = this.fieldpath();
    const c = this.sc.peek();
    if (c === 0x2c || c === EOF) return new CompiledSelector(fieldpath, '?', '');
    const op = this.operator();
    return new CompiledSelector(fieldpath, op, this.value(op === '~='));
  }

  private fieldpath(): string[] {
    const fs = [this.field()];
    while (this.sc.peek() === 0x2e) {
      this.sc.scan();
      fs.push(this.field());
    }
    return fs;
  }

  private field(): string {
    const [pos, tok, s] = this.sc.scan();
    if (tok === FIELD) return s;
    if (tok === QUOTED) return this.unquote(pos, s, false);
    if (tok === ILLEGAL) throw this.err(pos, this.sc.err);
    throw this.err(pos, 'expected field or quoted');
  }

  private operator(): Operator {
    const [pos, tok, s] = this.sc.scan();
    if (tok === OPERATOR) {
      if (s === '==' || s === '!=' || s === '~=') return s;
      throw this.err(pos, `unsupported operator ${JSON.stringify(s)}`);
    }
    if (tok === ILLEGAL) throw this.err(pos, this.sc.err);
    throw this.err(pos, 'expected an operator ("=="|"!="|"~=")');
  }

  private value(allowAltQuotes: boolean): string {
    const [pos, tok, s] = this.sc.scan();
    if (tok === VALUE || tok === FIELD) return s;
    if (tok === QUOTED) return this.unquote(pos, s, allowAltQuotes);
    if (tok === ILLEGAL) throw this.err(pos, this.sc.err);
    throw this.err(pos, 'expected value or quoted');
  }

  private unquote(pos: number, s: string, allowAlts: boolean): string {
    if (!allowAlts && s[0] !== '"' && s[0] !== "'") throw this.err(pos, 'invalid quote encountered');
    const v = unquote(s);
    if (v === null) throw this.err(pos, 'unquoting failed: quote syntax error');
    return v;
  }
}

export interface ParseOptions {
  /**
   * containerd's image, container and lease stores wrap ParseAll's error once more, so
   * their message ends in "invalid argument: invalid argument"; set this to say the same.
   */
  wrapAgain?: boolean;
}

/** Matches everything (no filter given). */
export const ALWAYS: Filter = new FilterImpl([]);

/** One filter string: its selectors AND-ed. The empty string matches everything. */
export function parseFilter(s: string): Filter {
  return parseFilters([s]);
}

/**
 * Several filter strings, OR-ed, as containerd's List RPCs take them. A parse error is
 * InvalidArgument, its message containerd's (`filters: parse error: [...]: ...`).
 */
export function parseFilters(filters: readonly string[] | undefined, opts: ParseOptions = {}): Filter {
  if (!filters || filters.length === 0) return ALWAYS;
  const alternatives = filters.map((f) => {
    if (f === '') return [];
    try {
      return new Parser(f).selectors();
    } catch (err) {
      if (err instanceof ParseError) {
        const e = errInvalidArgument(err.message, { cause: err });
        throw opts.wrapAgain ? errInvalidArgument(e.message, { cause: e }) : e;
      }
      throw err;
    }
  });
  return new FilterImpl(alternatives);
}
