// containerd's identifier, namespace and label rules (identifiers/validate.go,
// namespaces/context.go, labels/validate.go), with the same error classes and texts.
import { errFailedPrecondition, errInvalidArgument } from '@flotilla/errdefs';

const MAX_LENGTH = 76;
const IDENTIFIER_RE = /^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$/;
const MAX_LABEL = 4096;

export function validateIdentifier(s: string): void {
  if (s.length === 0) throw errInvalidArgument('identifier must not be empty');
  if (s.length > MAX_LENGTH) {
    throw errInvalidArgument(`identifier "${s}" greater than maximum length (${MAX_LENGTH} characters)`);
  }
  if (!IDENTIFIER_RE.test(s)) {
    throw errInvalidArgument(`identifier "${s}" must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`);
  }
}

/** The namespace of a call, validated; containerd refuses calls without one. */
export function namespaceRequired(ctx: { namespace?: string }): string {
  const ns = ctx.namespace;
  if (!ns) throw errFailedPrecondition('namespace is required');
  try {
    validateIdentifier(ns);
  } catch (err) {
    throw errInvalidArgument(`namespace validation: ${(err as Error).message.replace(/: invalid argument$/, '')}`, { cause: err });
  }
  return ns;
}

export function validateLabels(labels: Record<string, string> | undefined): void {
  for (const [k, v] of Object.entries(labels ?? {})) {
    if (k.length + v.length > MAX_LABEL) {
      throw errInvalidArgument(`label key and value greater than maximum size (${MAX_LABEL} bytes), key: ${k.slice(0, 10)}`);
    }
  }
}
