// @flotilla/identifiers: containerd's validation rules for ids, namespaces and labels.
export { validateIdentifier, namespaceRequired, validateLabels } from './identifiers.js';
