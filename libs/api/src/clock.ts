// A wall clock with sub-millisecond precision. containerd stamps ingests and blobs with
// Go's nanosecond time.Now(), and its conformance suite checks that each stamp falls
// between two client readings taken around the call; Date.now() truncates to the
// millisecond and file mtimes lag by a kernel tick, either of which can put a stamp
// before the client's first reading. The monotonic clock is anchored at a millisecond
// edge of the wall clock and re-anchored whenever the two disagree by a millisecond.

let anchorWall = 0;
let anchorHr = 0n;

function anchor(): void {
  // Spin until Date.now() ticks: the tick is the start of a millisecond. The anchor is the
  // monotonic reading taken just before the last Date.now() that still gave the old
  // millisecond, so it is at or before the tick: estimates err late by one turn of the loop
  // (well under a microsecond), never early. Anchoring after the tick (the reading after the
  // loop) made stamps early by however long the process was descheduled there, enough to
  // put an ingest's updated_at before the client's own reading taken ahead of its write.
  // Costs at most one millisecond, rarely.
  let before = process.hrtime.bigint();
  const start = Date.now();
  for (;;) {
    const hr = process.hrtime.bigint();
    const wall = Date.now();
    if (wall !== start) {
      anchorWall = wall;
      anchorHr = before;
      return;
    }
    before = hr;
  }
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
