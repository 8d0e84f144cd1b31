// containerd's update-mask handling for label maps: "labels" replaces the map,
// "labels.<key>" sets or (when absent or empty) removes one key.
import { errInvalidArgument } from '@flotilla/errdefs';

export function applyMapPaths<T>(
  field: string,
  current: Record<string, T>,
  incoming: Record<string, T>,
  paths: string[],
  isEmpty: (v: T) => boolean = (v) => v === undefined || (v as unknown) === '',
): { value: Record<string, T>; rest: string[] } {
  let value = { ...current };
  const rest: string[] = [];
  for (const p of paths) {
    if (p === field) value = { ...incoming };
    else if (p.startsWith(field + '.')) {
      const k = p.slice(field.length + 1);
      const v = incoming[k];
      if (v !== undefined && !isEmpty(v)) value[k] = v;
      else delete value[k];
    } else rest.push(p);
  }
  return { value, rest };
}

export function refuseFields(kind: string, name: string, paths: string[]): void {
  if (paths.length > 0) throw errInvalidArgument(`cannot update ${JSON.stringify(paths[0])} field on ${kind} ${JSON.stringify(name)}`);
}
