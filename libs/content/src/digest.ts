// go-digest's Digest.Validate, with its error texts (containerd's answers quote them).
export { canonicalDigester, digestOf } from '@flotilla/api';

const ALGORITHMS: Record<string, number> = { sha256: 64, sha384: 96, sha512: 128 };
const DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export const ErrDigestInvalidFormat = 'invalid checksum digest format';
export const ErrDigestInvalidLength = 'invalid checksum digest length';
export const ErrDigestUnsupported = 'unsupported digest algorithm';

/** The reason `d` is not a valid digest, or undefined when it is. */
export function digestError(d: string): string | undefined {
  const i = d.indexOf(':');
  if (i <= 0 || i + 1 === d.length) return ErrDigestInvalidFormat;
  const alg = d.slice(0, i);
  const enc = d.slice(i + 1);
  const len = ALGORITHMS[alg];
  if (len === undefined) return DIGEST_RE.test(d) ? ErrDigestUnsupported : ErrDigestInvalidFormat;
  if (enc.length !== len) return ErrDigestInvalidLength;
  if (!/^[a-f0-9]+$/.test(enc)) return ErrDigestInvalidFormat;
  return undefined;
}
