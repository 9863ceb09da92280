// When `extfs serve` remaps its images: on its schedule, and when a mover asks (POST remap). Remaps run
// one at a time, in the remapper's own thread (remap-worker.ts), so serve's event loop keeps answering.
import fs from 'node:fs'
import type { Logger } from 'pino'
import type { RemapResult } from '../remap/remap'
import type { RemapOutcome, RemapTrigger, ServeMetrics } from './metrics'
import type { Remapper } from './remap-worker'
import type { Image, ImageRegistry } from './registry'

export const DEFAULT_INTERVAL_MS = 60_000
/**
 * The remap schedule's budget: a remap maps every file of the image again, so at a fixed interval its
 * cost would grow with the file count. After each remap of an image, the next scheduled one comes no
 * sooner than this many times that remap's duration times the number of images: remaps run one at a
 * time, so scheduled remaps together take at most 1/50 = 2% of one core, however large the images.
 * Nothing is lost for a backup run by `extfs backup`, which asks for one remap of its own at its end
 * (docs/remap.md, "Up to the end of a backup").
 */
export const REMAP_COST_FACTOR = 50
/** setTimeout's longest delay (longer ones fire at once): a later remap is looked at again then. */
const MAX_TIMER_MS = 2 ** 31 - 1

export class RemapScheduler {
  /** When the schedule remaps each image next (performance.now() ms), by name. */
  private readonly nextRemapAt = new Map<string, number>()
  private timer?: NodeJS.Timeout
  /** The remap running or last queued: each new one starts after it. */
  private queue: Promise<unknown> = Promise.resolve()
  private closing = false

  /** `intervalMs`: remap each image this often at most (longer for long remaps); 0: only when asked. */
  constructor(
    private readonly registry: ImageRegistry,
    private readonly remapper: Remapper,
    private readonly key: Buffer,
    private readonly log: Logger,
    private readonly intervalMs: number,
    private readonly metrics: ServeMetrics,
  ) {}

  start(): void {
    for (const img of this.registry.all()) this.nextRemapAt.set(img.name, performance.now() + this.intervalMs)
    this.arm()
  }

  /** Waits for the remap running (a remap stopped halfway would leave its lock behind), then stops the remapper. */
  async close(): Promise<void> {
    this.closing = true
    clearTimeout(this.timer)
    await this.queue
    await this.remapper.close?.()
  }

  /** Re-maps `img` once every remap already asked for has ended. */
  remap(img: Image, trigger: RemapTrigger): Promise<RemapResult> {
    const run = this.queue.then(() => this.remapOne(img, trigger))
    this.queue = run.catch(() => undefined)
    return run
  }

  /** One timer, for the image due first (--interval 0: none). */
  private arm(): void {
    clearTimeout(this.timer)
    if (this.closing || this.intervalMs === 0 || this.nextRemapAt.size === 0) return
    const due = Math.min(...this.nextRemapAt.values())
    this.timer = setTimeout(() => void this.remapDue(), Math.min(MAX_TIMER_MS, Math.max(0, due - performance.now())))
  }

  /** Remaps each image whose time has come, then waits for the next one due. */
  private async remapDue(): Promise<void> {
    for (const img of this.registry.all()) {
      if (this.closing || (this.nextRemapAt.get(img.name) ?? Infinity) > performance.now()) continue
      try {
        await this.remap(img, 'schedule')
      } catch {
        // logged by remapOne; the image stays on the schedule
      }
    }
    this.arm()
  }

  /**
   * Re-maps one image, logged and counted with how long it took, and when the schedule remaps it next
   * (also when it failed or found the image released).
   */
  private async remapOne(img: Image, trigger: RemapTrigger): Promise<RemapResult> {
    if (this.closing) throw new Error('serve is stopping')
    const started = performance.now()
    const ended = (outcome: RemapOutcome) => {
      const ms = performance.now() - started
      this.metrics.remapped(img.name, trigger, outcome, ms / 1000)
      return { ms: Math.round(ms), nextDue: this.reschedule(img, started, ms) }
    }
    let r: RemapResult
    try {
      r = await this.remapNow(img)
    } catch (err) {
      this.log.error({ image: img.name, err: (err as Error).message, ...ended('failed') }, 'remap failed')
      throw err
    }
    const t = ended(r.state)
    if (r.state !== 'released') {
      const keptBytes = this.remapper.keptBytes?.()
      this.log.info({ image: img.name, state: r.state, configId: r.configId, deltaBytes: r.deltaBytes, manifestBytes: r.manifestBytes, keptBytes, ...t }, 'remap')
    }
    return r
  }

  private async remapNow(img: Image): Promise<RemapResult> {
    this.registry.sync(img)
    const row = this.registry.row(img)
    if (row.state === 'released') return { state: 'released', configId: row.configId, manifestBytes: fs.statSync(img.manifestPath).size }
    // Remap writes the record: not over one that cannot be read, which may have said released.
    if (row.state === 'unknown') throw new Error(row.reason)
    try {
      return await this.remapper.remap(img.manifestPath, { key: this.key, warn: (m) => this.log.warn({ image: img.name }, m) })
    } finally {
      this.registry.sync(img)
    }
  }

  /**
   * When the schedule may remap `img` again after a remap (scheduled or asked for) that started at
   * `started` and took `ms`: --interval, or longer when remaps are long (REMAP_COST_FACTOR).
   */
  private reschedule(img: Image, started: number, ms: number): string | undefined {
    if (this.intervalMs === 0) return undefined
    const next = started + Math.max(this.intervalMs, REMAP_COST_FACTOR * this.nextRemapAt.size * ms)
    this.nextRemapAt.set(img.name, next)
    return new Date(Date.now() + next - performance.now()).toISOString()
  }
}
