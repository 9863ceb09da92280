// Progress of long work (export's mapping, the load of a manifest at mount, backup's command): a status
// line rewritten in place on a terminal, JSON lines in the manner of restic's `--json` status messages
// otherwise, nothing with --quiet. Always on stderr: stdout holds the command's result, which scripts
// read. The schema is in docs/cli.md ("Progress").
//
// Cost: export calls update() once per file on the initiator, whose CPU we minimise
// (docs/initiator-cost.md). update() stores two numbers and counts the call; only every `stride`-th
// call reads the clock, and the stride adapts so that the clock is read about every CHECK_MS whatever
// the rate of calls. Output happens at most every interval. Work that runs synchronously (export)
// gets no timer callbacks, so progress is driven by update() calls only, never by a timer.

import type { Counts, ProgressSink } from '../progress'
import { markUnfinishedLine } from '../stderr-line'

export type ProgressMode = 'line' | 'json' | 'quiet'

/** quiet if opts.quiet; json if opts.json or stderr is not a terminal; line if stderr is a TTY. */
export function progressMode(opts: { quiet?: boolean; json?: boolean }, stderr: NodeJS.WriteStream = process.stderr): ProgressMode {
  if (opts.quiet) return 'quiet'
  return opts.json || !stderr.isTTY ? 'json' : 'line'
}

/** Files and bytes, absolute. */
export type ProgressCounts = Counts

/**
 * update(done, total?): counts done so far (absolute, not increments); cheap to call very often:
 * output is throttled. setPhase(phase, total?): a new phase (named in JSON's `phase` and the line):
 * its counts start again, as may its total, and the rate's window starts afresh; written at once.
 */
export interface Progress extends ProgressSink {
  /**
   * Final line/object (on a terminal always; JSON lines once any were written), then stops; `done`
   * absent: the counts last given to update() in this phase.
   */
  finish(done?: ProgressCounts): void
}

export interface ProgressOptions {
  command: 'export' | 'mount' | 'backup'
  phase?: string
  mode: ProgressMode
  /** A field absent (or the whole) when unknown. */
  total?: Partial<ProgressCounts>
  stream?: NodeJS.WritableStream
  /** Between outputs, ms: default 100 on a terminal (10 per second), 1000 for JSON lines. */
  intervalMs?: number
  /** Milliseconds on a monotonic clock; injected by tests. */
  now?: () => number
  /**
   * What the percentage and ETA follow when both totals are known: export's cost is per file (one
   * FIEMAP for 4 KiB or 4 GiB), a backup's command's per byte. Default: bytes if their total is known.
   */
  pace?: 'files' | 'bytes'
}

/** EXTFS_PROGRESS_INTERVAL_MS: the interval, ms, for tests (documented as for tests only). */
function intervalFromEnv(): number | undefined {
  const v = Number(process.env.EXTFS_PROGRESS_INTERVAL_MS)
  return Number.isInteger(v) && v > 0 ? v : undefined
}

const QUIET: Progress = { update() {}, setPhase() {}, finish() {} }

export function startProgress(opts: ProgressOptions): Progress {
  if (opts.mode === 'quiet') return QUIET
  return new Reporter(opts)
}

/** Read the clock about this often, ms, while calls come. */
const CHECK_MS = 10
const MAX_STRIDE = 4096
/** JSON lines: how many intervals of work pass before the first (see Reporter.quietUntil). */
const QUIET_INTERVALS = 5
/**
 * The rate is that of the last WINDOW_MS, from samples kept every SAMPLE_MS: export's rate changes by
 * phase and by directory (a tree of small files, then one of large ones), and a rate since the start
 * would drag the ETA behind what the work now does for as long as the work has run.
 */
const WINDOW_MS = 10_000
const SAMPLE_MS = 1000

interface Sample {
  t: number
  files: number
  bytes: number
}

class Reporter implements Progress {
  private readonly out: NodeJS.WritableStream
  private readonly now: () => number
  private readonly intervalMs: number
  private readonly started: number
  private phase: string | undefined
  private total: Partial<ProgressCounts> | undefined
  private files = 0
  private bytes = 0
  private calls = 0
  private stride = 1
  private lastCheck: number
  private due: number
  private samples: Sample[]
  private done = false
  /**
   * JSON lines start only once the work has run QUIET_INTERVALS intervals, and the summary is written
   * only after status lines: a command that ends (or fails) quickly says on stderr what it says without
   * progress (nothing, or its one error line), as scripts and cron mail expect; long work is announced.
   */
  private readonly quietUntil: number
  private wrote = false

  constructor(private readonly opts: ProgressOptions) {
    this.out = opts.stream ?? process.stderr
    this.now = opts.now ?? (() => performance.now())
    this.intervalMs = opts.intervalMs ?? intervalFromEnv() ?? (opts.mode === 'line' ? 100 : 1000)
    this.phase = opts.phase
    this.total = opts.total
    this.started = this.lastCheck = this.now()
    this.due = this.started + this.intervalMs
    this.quietUntil = opts.mode === 'json' ? this.started + QUIET_INTERVALS * this.intervalMs : this.started
    this.samples = [{ t: this.started, files: 0, bytes: 0 }]
  }

  update(done: ProgressCounts, total?: Partial<ProgressCounts>): void {
    this.files = done.files
    this.bytes = done.bytes
    if (total) this.total = total
    if (++this.calls < this.stride) return
    this.calls = 0
    const t = this.now()
    // Calls come faster than CHECK_MS / 4 apart: read the clock half as often; slower than CHECK_MS: twice.
    const since = t - this.lastCheck
    if (since < CHECK_MS / 4) this.stride = Math.min(this.stride * 2, MAX_STRIDE)
    else if (since > CHECK_MS) this.stride = Math.max(1, this.stride >> 1)
    this.lastCheck = t
    if (t >= this.due) this.emit(t)
  }

  setPhase(phase: string, total?: Partial<ProgressCounts>): void {
    if (this.done) return
    const t = this.now()
    this.phase = phase
    this.total = total
    this.files = this.bytes = 0
    this.samples = [{ t, files: 0, bytes: 0 }]
    this.emit(t)
  }

  finish(done: ProgressCounts = { files: this.files, bytes: this.bytes }): void {
    if (this.done) return
    this.done = true
    this.files = done.files
    this.bytes = done.bytes
    const elapsed = (this.now() - this.started) / 1000
    if (this.opts.mode === 'json') {
      if (this.wrote) this.write(JSON.stringify(summaryMessage(this.opts.command, done, elapsed)) + '\n')
    } else {
      this.write('\r' + fit(finalLine(this.opts.command, done, elapsed), this.columns()) + CLEAR_TO_END + '\n')
      this.unfinished(false)
    }
  }

  private emit(t: number): void {
    if (this.done) return
    this.due = t + this.intervalMs
    if (t < this.quietUntil) return
    this.wrote = true
    const status = statusOf({ phase: this.phase, files: this.files, bytes: this.bytes, total: this.total, t, started: this.started, pace: this.opts.pace, window: this.window(t) })
    if (this.opts.mode === 'json') this.write(JSON.stringify(statusMessage(this.opts.command, status)) + '\n')
    else {
      this.write('\r' + fit(statusLine(this.opts.command, status), this.columns()) + CLEAR_TO_END)
      this.unfinished(true)
    }
  }

  /** A status line left on stderr is taken away by the next log line written there (src/stderr-line.ts). */
  private unfinished(on: boolean): void {
    if (this.out === process.stderr) markUnfinishedLine(on)
  }

  /** The oldest sample still in the window; takes a sample every SAMPLE_MS. */
  private window(t: number): Sample {
    const last = this.samples[this.samples.length - 1]!
    if (t - last.t >= SAMPLE_MS) this.samples.push({ t, files: this.files, bytes: this.bytes })
    while (this.samples.length > 2 && t - this.samples[1]!.t >= WINDOW_MS) this.samples.shift()
    return this.samples[0]!
  }

  private columns(): number | undefined {
    return (this.out as NodeJS.WriteStream).columns
  }

  private write(text: string): void {
    try {
      this.out.write(text)
    } catch {
      // stderr gone (a closed terminal): progress is not worth failing the work for.
    }
  }
}

const CLEAR_TO_END = '\x1b[K'

/** What one status message says; fields absent when unknown. */
export interface Status {
  phase?: string
  filesDone: number
  bytesDone: number
  filesTotal?: number
  bytesTotal?: number
  /** 0..1 */
  fraction?: number
  secondsElapsed: number
  filesPerSecond?: number
  bytesPerSecond?: number
  secondsRemaining?: number
}

/** The shortest span the rate is computed over, ms: less is noise. */
const MIN_RATE_MS = 200

/** The status at `t`: rate over the window from `window` to now, ETA from it. Pure. */
export function statusOf(s: { phase?: string; files: number; bytes: number; total?: Partial<ProgressCounts>; t: number; started: number; pace?: 'files' | 'bytes'; window: Sample }): Status {
  const out: Status = { filesDone: s.files, bytesDone: s.bytes, secondsElapsed: (s.t - s.started) / 1000 }
  if (s.phase !== undefined) out.phase = s.phase
  const span = s.t - s.window.t
  if (span >= MIN_RATE_MS) {
    out.filesPerSecond = Math.max(0, (s.files - s.window.files) * 1000 / span)
    out.bytesPerSecond = Math.max(0, (s.bytes - s.window.bytes) * 1000 / span)
  }
  const { files, bytes } = s.total ?? {}
  if (files !== undefined) out.filesTotal = files
  if (bytes !== undefined) out.bytesTotal = bytes
  const pace = s.pace ?? (bytes !== undefined && bytes > 0 ? 'bytes' : 'files')
  const [done, total, rate] = pace === 'bytes' ? [s.bytes, bytes, out.bytesPerSecond] : [s.files, files, out.filesPerSecond]
  if (total !== undefined && total > 0) {
    out.fraction = Math.min(1, done / total)
    if (rate !== undefined && rate > 0) out.secondsRemaining = Math.max(0, total - done) / rate
  }
  return out
}

/** restic-style status object (snake_case), absent fields left out. */
export function statusMessage(command: string, s: Status): Record<string, unknown> {
  const m: Record<string, unknown> = { message_type: 'status', command }
  if (s.phase !== undefined) m.phase = s.phase
  m.files_done = s.filesDone
  if (s.filesTotal !== undefined) m.files_total = s.filesTotal
  m.bytes_done = s.bytesDone
  if (s.bytesTotal !== undefined) m.bytes_total = s.bytesTotal
  if (s.fraction !== undefined) m.percent_done = round(s.fraction, 4)
  m.seconds_elapsed = round(s.secondsElapsed, 3)
  if (s.filesPerSecond !== undefined) m.files_per_second = round(s.filesPerSecond, 1)
  if (s.bytesPerSecond !== undefined) m.bytes_per_second = Math.round(s.bytesPerSecond)
  if (s.secondsRemaining !== undefined) m.seconds_remaining = Math.ceil(s.secondsRemaining)
  return m
}

export function summaryMessage(command: string, done: ProgressCounts, secondsElapsed: number): Record<string, unknown> {
  const m: Record<string, unknown> = { message_type: 'summary', command, files_done: done.files, bytes_done: done.bytes, seconds_elapsed: round(secondsElapsed, 3) }
  if (secondsElapsed > 0) m.bytes_per_second = Math.round(done.bytes / secondsElapsed)
  return m
}

/** e.g. `export: map 412,000/1,000,000 files  38.2/95.0 GiB  1.2 GiB/s  ETA 0:47` */
export function statusLine(command: string, s: Status): string {
  // A phase without counts yet (taking the image, writing the manifest) is named alone.
  if (s.filesDone === 0 && s.bytesDone === 0 && s.filesTotal === undefined && s.bytesTotal === undefined) return `${command}:${s.phase ? ' ' + s.phase : ''}`
  const parts = [`${command}:${s.phase ? ' ' + s.phase : ''} ${count(s.filesDone, s.filesTotal)} files`, bytesOf(s.bytesDone, s.bytesTotal)]
  if (s.fraction !== undefined) parts.push(`${(s.fraction * 100).toFixed(1)}%`)
  if (s.bytesPerSecond !== undefined) parts.push(`${bytesOf(s.bytesPerSecond)}/s`)
  if (s.secondsRemaining !== undefined) parts.push(`ETA ${clock(s.secondsRemaining)}`)
  return parts.join('  ')
}

/** e.g. `export: 1,000,000 files  95.0 GiB  in 1:20` */
export function finalLine(command: string, done: ProgressCounts, secondsElapsed: number): string {
  return `${command}: ${count(done.files)} files  ${bytesOf(done.bytes)}  in ${clock(secondsElapsed)}`
}

/** Cut to the terminal's width (less one column: a line that fills it wraps on some terminals). */
export function fit(line: string, columns: number | undefined): string {
  return columns !== undefined && columns > 1 && line.length > columns - 1 ? line.slice(0, columns - 1) : line
}

function count(done: number, total?: number): string {
  return total === undefined ? grouped(done) : `${grouped(done)}/${grouped(total)}`
}

function grouped(n: number): string {
  return Math.round(n).toLocaleString('en-US')
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']

/** Binary units; a pair shares the unit of the total: `38.2/95.0 GiB`. */
export function bytesOf(done: number, total?: number): string {
  let unit = 0
  const scale = total ?? done
  while (unit < UNITS.length - 1 && scale >= 1024 ** (unit + 1)) unit++
  const f = (n: number) => (unit === 0 ? String(Math.round(n)) : (n / 1024 ** unit).toFixed(1))
  return total === undefined ? `${f(done)} ${UNITS[unit]}` : `${f(done)}/${f(total)} ${UNITS[unit]}`
}

/** 47 → `0:47`; 3725 → `1:02:05`. */
export function clock(seconds: number): string {
  const s = Math.round(seconds)
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const ss = String(s % 60).padStart(2, '0')
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`
}

function round(n: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(n * f) / f
}
