// A wall clock with sub-millisecond precision. containerd stamps ingests and blobs with
// Go's nanosecond time.Now(), and its conformance suite checks that each stamp falls
// between two client readings taken around the call; Date.now() truncates to the
// millisecond and file mtimes lag by a kernel tick, either of which can put a stamp
// before the client's first reading. The monotonic clock is anchored at a millisecond
// edge of the wall clock and re-anchored whenever the two disagree by a millisecond.

let anchorWall = 0;
let anchorHr = 0n;

function anchor(): void {
  // Spin until Date.now() ticks: the tick is the start of a millisecond to within the
  // loop's resolution (a few microseconds). Costs at most one millisecond, rarely.
  const start = Date.now();
  let wall = start;
  while (wall === start) wall = Date.now();
  anchorWall = wall;
  anchorHr = process.hrtime.bigint();
}

/** Milliseconds since the epoch, with a microsecond fraction. */
export function preciseNow(): number {
  if (anchorHr === 0n) anchor();
  let est = anchorWall + Number(process.hrtime.bigint() - anchorHr) / 1e6;
  const wall = Date.now();
  if (est < wall || est >= wall + 1) {
    anchor();
    est = anchorWall + Number(process.hrtime.bigint() - anchorHr) / 1e6;
  }
  return est;
}
