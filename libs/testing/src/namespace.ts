// Test isolation by name: each test works in a containerd namespace derived from its title.
import { createHash } from 'node:crypto';

/** containerd's namespace rule: alphanumeric runs joined by single '.', '_' or '-', at most 76. */
const NAMESPACE_RE = /^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/;
const MAX = 76;

/**
 * A valid containerd namespace from a test title: lower-cased, runs of other characters
 * become '-'. The same title always gives the same name; a title too long to fit is cut and
 * suffixed with a hash of the whole title, so two long titles sharing a prefix still differ.
 */
export function testNamespace(title: string): string {
  const slug = title.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '');
  if (slug && slug.length <= MAX && NAMESPACE_RE.test(slug)) return slug;
  const hash = createHash('sha256').update(title).digest('hex').slice(0, 8);
  const head = slug.slice(0, MAX - hash.length - 1).replace(/-+$/, '');
  return head ? `${head}-${hash}` : `t-${hash}`;
}
