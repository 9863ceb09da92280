// How much of a file the kernel's page cache holds (fincore): what push-ahead stored through the view.
import { runOk } from './exec'

/** Bytes of `file` in the page cache now. */
export async function cachedBytes(file: string): Promise<number> {
  return Number((await runOk('fincore', ['--bytes', '--noheadings', '--output', 'RES', file])).stdout.trim())
}

/**
 * Cached bytes of `file` once they stop growing (the same for three seconds: on a loaded host the
 * pusher can pause longer than a second between stores), or as soon
 * as they reach `enough`; at most 30 s.
 */
export async function settledCachedBytes(file: string, enough = Infinity): Promise<number> {
  let last = -1
  let same = 0
  for (let i = 0; i < 60; i++) {
    const now = await cachedBytes(file)
    if (now >= enough) return now
    same = now === last ? same + 1 : 0
    if (same === 6) return now
    last = now
    await new Promise((r) => setTimeout(r, 500))
  }
  return last
}
