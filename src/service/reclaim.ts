// Memory a burst of connections took, given back once the burst ends (docs/remap.md, "What serve
// spends on whoever connects"). The caps (connections.ts) bound what a burst can take, but V8
// collects the burst's garbage only when it decides to, and glibc keeps freed pages in its arenas for
// reuse: after an attack of thousands of connections serve stayed tens of MiB above where it started.
// Once a burst has ended, serve asks for both: a full collection (gc, which bin/extfs exposes by
// starting Node with --expose-gc; without it, the collection is left to V8) and malloc_trim (the
// native addon: Node has no way to ask for it).
import type { Logger } from 'pino'
import { linux } from '../linux'

/** Connections (admitted or cut) since the last reclaim that make a burst. */
export const BURST_CONNECTIONS = 1000
/** A second with fewer new connections than this ends a burst. */
export const QUIET_CONNECTIONS = 16
const CHECK_MS = 1000

export class Reclaimer {
  private sinceReclaim = 0
  private thisSecond = 0
  private readonly timer: NodeJS.Timeout

  constructor(private readonly log: Logger) {
    this.timer = setInterval(() => this.check(), CHECK_MS).unref()
  }

  /** A connection came, admitted or cut. */
  connected(): void {
    this.sinceReclaim++
    this.thisSecond++
  }

  stop(): void {
    clearInterval(this.timer)
  }

  private check(): void {
    const quiet = this.thisSecond < QUIET_CONNECTIONS
    this.thisSecond = 0
    if (!quiet || this.sinceReclaim < BURST_CONNECTIONS) return
    const connections = this.sinceReclaim
    this.sinceReclaim = 0
    const before = process.memoryUsage.rss()
    globalThis.gc?.()
    linux.mallocTrim()
    const after = process.memoryUsage.rss()
    this.log.info({ connections, rssBeforeMiB: mib(before), rssAfterMiB: mib(after) }, 'a burst of connections ended: memory given back')
  }
}

function mib(bytes: number): number {
  return Math.round((bytes / 2 ** 20) * 10) / 10
}
