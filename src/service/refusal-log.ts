// What `extfs serve` logs of the requests and connections it refuses: a counter and a sample, never a
// line per refusal. Anyone who can reach the port can make refusals as fast as the network carries
// them, each with a URL of up to 16 KiB; logged one by one they fill the disk (60,000 refused requests
// with 15 KB URLs were 912 MB of log in 8 s). Per reason, the first refusal after a quiet period is
// logged at once; those in the next SAMPLE_PERIOD_MS are counted and logged as one line with their
// count and one sample at the period's end. So each reason writes at most one line per period, each
// line bounded (the URL cut to MAX_SAMPLE_BYTES, control characters escaped). The exact counts are
// serve's metrics (ServeMetrics.refused, counted by the caller).
import type { Logger } from 'pino'
import type { RefusalReason } from './metrics'

export const SAMPLE_PERIOD_MS = 10_000
export const MAX_SAMPLE_BYTES = 200

/** One refused request or connection, as logged. */
export interface RefusalSample {
  remote?: string
  method?: string
  url?: string
  err?: string
}

interface Period {
  count: number
  sample?: RefusalSample
  timer: NodeJS.Timeout
}

export class RefusalLog {
  private readonly periods = new Map<RefusalReason, Period>()

  constructor(private readonly log: Logger, private readonly periodMs = SAMPLE_PERIOD_MS) {}

  /** Logs a refusal as the rule above says. */
  refused(reason: RefusalReason, sample: RefusalSample): void {
    const p = this.periods.get(reason)
    if (p) {
      p.count++
      p.sample ??= sample
      return
    }
    this.write(reason, 1, sample)
    this.periods.set(reason, { count: 0, timer: this.endOfPeriod(reason) })
  }

  /** Logs what the periods still hold, and stops their timers. */
  close(): void {
    for (const [reason, p] of this.periods) {
      clearTimeout(p.timer)
      if (p.count > 0) this.write(reason, p.count, p.sample!)
    }
    this.periods.clear()
  }

  private endOfPeriod(reason: RefusalReason): NodeJS.Timeout {
    const timer = setTimeout(() => {
      const p = this.periods.get(reason)!
      if (p.count === 0) {
        this.periods.delete(reason)
        return
      }
      this.write(reason, p.count, p.sample!)
      this.periods.set(reason, { count: 0, timer: this.endOfPeriod(reason) })
    }, this.periodMs)
    timer.unref()
    return timer
  }

  private write(reason: RefusalReason, count: number, s: RefusalSample): void {
    this.log.warn({ reason, count, remote: s.remote, method: s.method && shown(s.method), url: s.url && shown(s.url), err: s.err }, 'refused')
  }
}

/**
 * `text` with control characters (and backslashes) escaped, cut to MAX_SAMPLE_BYTES (UTF-8), so a
 * sample is one short line whatever the request carried.
 */
export function shown(text: string): string {
  const escaped = text.slice(0, MAX_SAMPLE_BYTES).replace(/[\\\u0000-\u001f\u007f-\u009f]/g, (c) => (c === '\\' ? '\\\\' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`))
  // A code point cut in two decodes to U+FFFD: harmless in a sample.
  const head = Buffer.from(escaped, 'utf8').subarray(0, MAX_SAMPLE_BYTES).toString('utf8')
  const cut = text.length > MAX_SAMPLE_BYTES || head.length < escaped.length
  return cut ? `${head}…(${text.length} chars)` : head
}
