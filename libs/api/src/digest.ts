// The running digest of written content, as containerd's content writers report it. One
// definition for the content store and the gateway, which answers pipelined WRITEs with the
// digest the store will compute.
import { createHash, type Hash } from 'node:crypto';

/** The digester every content writer uses (containerd's digest.Canonical). */
export function canonicalDigester(): Hash {
  return createHash('sha256');
}

/** The digest of what `h` has seen so far; `h` keeps going. */
export function digestOf(h: Hash): string {
  return 'sha256:' + h.copy().digest('hex');
}
