// What a view refused or failed since it was mounted, whichever engine serves it: `extfs backup` calls
// a backup incomplete when its view refused or failed anything while the command ran.

/** An open refused, a read refused (image not current), a read that failed (device error). */
export type RefusalKind = 'open' | 'read-refused' | 'read'

export interface RefusalSummary {
  count: number
  /**
   * How the first one was reported, e.g. "open refused: frozen image … was released": the first
   * refusal, or when there was none, the first failed read.
   */
  first?: string
  /** Reads that failed (the device answered an error): how many requests, of how many files, which. */
  failedReads: FailedReads
}

export interface FailedReads {
  requests: number
  files: number
  /** Paths of the first FAILED_FILES_NAMED files, in the order their first read failed. */
  paths: string[]
}

/** How many files' paths a summary keeps (it counts them all). */
export const FAILED_FILES_NAMED = 100

const WHAT: Record<RefusalKind, string> = { open: 'open refused', 'read-refused': 'read refused', read: 'read failed' }

export class Refusals {
  private count = 0
  private firstRefused?: string
  private firstFailed?: string
  private failedRequests = 0
  /** Files (as numbered by the engine) whose reads failed, and the paths of the first of them. */
  private readonly failedFiles = new Set<number>()
  private readonly failedPaths: string[] = []
  /** File → when its last open refusal not yet followed by the kernel's retry was noted. */
  private readonly unpairedOpens = new Map<number, number>()

  /**
   * Counts one refusal of `file` (any number naming the file to the engine; `path`, one of its names);
   * false when it is the kernel's retry of an open refused just before, which is neither counted nor
   * to be logged.
   */
  note(kind: RefusalKind, file: number, reason: string, path: string): boolean {
    if (kind === 'open' && this.kernelRetry(file)) return false
    this.count++
    if (kind !== 'read') {
      this.firstRefused ??= `${WHAT[kind]}: ${reason}`
      return true
    }
    this.firstFailed ??= `${WHAT[kind]}: ${path}: ${reason}`
    this.failedRequests++
    if (!this.failedFiles.has(file)) {
      this.failedFiles.add(file)
      if (this.failedPaths.length < FAILED_FILES_NAMED) this.failedPaths.push(path)
    }
    return true
  }

  summary(): RefusalSummary {
    return {
      count: this.count,
      first: this.firstRefused ?? this.firstFailed,
      failedReads: { requests: this.failedRequests, files: this.failedFiles.size, paths: [...this.failedPaths] },
    }
  }

  /**
   * The kernel answers an open refused with ESTALE by looking the file up again and retrying the open
   * once: a second refusal of the same file within a second is that retry, not another open. Unpaired
   * refusals are remembered by file (the map is cleared when it grows large).
   */
  private kernelRetry(file: number): boolean {
    const now = performance.now()
    const first = this.unpairedOpens.get(file)
    if (first !== undefined && now - first < 1000) {
      this.unpairedOpens.delete(file)
      return true
    }
    if (this.unpairedOpens.size >= 1024) this.unpairedOpens.clear()
    this.unpairedOpens.set(file, now)
    return false
  }
}
