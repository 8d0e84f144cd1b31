// A wall clock with sub-millisecond precision. containerd stamps ingests and blobs with
// Go's nanosecond time.Now(), and its conformance suite checks that each stamp falls
// between two client readings taken around the call; Date.now() truncates to the
// millisecond and file mtimes lag by a kernel tick, either of which can put a stamp
// before the client's first reading. The monotonic clock is anchored at a millisecond
// edge of the wall clock, and anchored again every 5 s and whenever the two disagree by a
// millisecond.

let anchorWall = 0;
let anchorHr = 0n;

/** An anchor pinned down to this much (ns) is taken at once; a wider one is tried again. */
const ANCHOR_SLACK_NS = 20_000n;
/** Millisecond ticks tried for a narrow anchor before the narrowest seen is kept. */
const ANCHOR_TRIES = 10;
/** An anchor older than this (ns) is renewed: the wall clock may be slewed or stepped. */
const ANCHOR_MAX_AGE_NS = 5_000_000_000n;

function anchor(): void {
  // Spin until Date.now() ticks: the tick is the start of a millisecond. It fell after the
  // monotonic reading taken just before the last Date.now() that still gave the old
  // millisecond, and before the reading just after the first that gave the new one. The
  // anchor is the earlier reading, so estimates err late by at most that window, never
  // early (anchoring after the tick made stamps early by however long the process was
  // descheduled there, enough to put an ingest's updated_at before the client's own reading
  // taken ahead of its write). The window is usually under a microsecond, but a process
  // descheduled at the tick widens it to tens of microseconds idle and to milliseconds on a
  // loaded machine, which put stamps after the client's reading taken after the call
  // (containerd's content testsuite failed so once in CI): a window wider than
  // ANCHOR_SLACK_NS is tried again at the next tick. Costs about a millisecond per try.
  let bestWall = 0;
  let bestHr = 0n;
  let bestWidth = -1n;
  for (let tries = 0; tries < ANCHOR_TRIES; tries++) {
    let before = process.hrtime.bigint();
    const start = Date.now();
    for (;;) {
      const h0 = process.hrtime.bigint();
      const wall = Date.now();
      const h1 = process.hrtime.bigint();
      if (wall !== start) {
        const width = h1 - before;
        if (bestWidth < 0n || width < bestWidth) [bestWall, bestHr, bestWidth] = [wall, before, width];
        break;
      }
      before = h0;
    }
    if (bestWidth <= ANCHOR_SLACK_NS) break;
  }
  anchorWall = bestWall;
  anchorHr = bestHr;
}

/** Anchors the clock again now (after a known clock step; tests check fresh anchors). */
export function reanchorClock(): void {
  anchor();
}

/** Milliseconds since the epoch, with a microsecond fraction. */
export function preciseNow(): number {
  let hr = process.hrtime.bigint();
  if (anchorHr === 0n || hr - anchorHr > ANCHOR_MAX_AGE_NS) {
    anchor();
    hr = process.hrtime.bigint();
  }
  let est = anchorWall + Number(hr - anchorHr) / 1e6;
  const wall = Date.now();
  if (est < wall || est >= wall + 1) {
    anchor();
    est = anchorWall + Number(process.hrtime.bigint() - anchorHr) / 1e6;
  }
  return est;
}
