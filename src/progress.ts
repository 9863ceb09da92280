// What long work reports its progress to: the CLI's reporter (src/cli/progress.ts) is one. Here, in
// the lowest layer, so that export and the mover's loader report without importing the CLI.

/** Absolute counts: files (inodes) and bytes, each layer saying which bytes it counts. */
export interface Counts {
  files: number
  bytes: number
}

export interface ProgressSink {
  /** A phase starts (its counts from 0); a total field absent when unknown. */
  setPhase(phase: string, total?: Partial<Counts>): void
  /** May be called very often: the reporter reads the clock only every few calls. */
  update(done: Counts, total?: Partial<Counts>): void
}
