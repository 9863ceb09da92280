// The end of `extfs backup` of an image `extfs serve` answers for (docs/remap.md, "Guarantee").
// Blocks of the image may move at any moment; serve finds out only when it remaps, and its schedule
// may leave minutes between remaps. So once the backup's command has exited, and before the view goes,
// the mover asks serve for one remap now and waits until its own view has applied what that remap
// published. Every file the command read whose extents moved up to that moment is then tainted, and
// named in the view's report. The view says where it is in the config-ID chain in its state file
// (src/mover/state.ts, written by src/mover/run-view.ts whenever it followed a delta).
import { ConfigClient } from '../service/client'
import type { RemoteSource } from './run-view'
import { loadState, reached, type ChainPosition } from './state'
import { processAlive } from '../process'

/**
 * How long the final remap may take. It maps every file of the image (a million-file image takes tens
 * of seconds: docs/remap.md, "Remap schedule"), may wait for a remap of another image running first,
 * and a busy initiator takes longer still.
 */
export const FINAL_REMAP_TIMEOUT_MS = 10 * 60_000
/**
 * How long the view may take to reach the remap's config ID. Its long poll brings the new config ID
 * at once; then it fetches and applies the delta (well under a second here). The margin covers a long
 * poll that failed (serve restarted, a network hiccup) and waits for its retry (at most 5 s).
 */
export const CATCH_UP_TIMEOUT_MS = 10_000
const CATCH_UP_POLL_MS = 50

export interface FinalRemapOptions {
  remote: RemoteSource
  key: Buffer
  mountpoint: string
  /** The process serving the view on `mountpoint`. */
  viewPid: number
  catchUpMs?: number
  /** Aborts the remap request or the wait (the backup was interrupted). */
  signal?: AbortSignal
}

/**
 * Ask serve for one remap of the image and wait for the view to reach the config ID it answered, or a
 * later one. Resolves with undefined when it did, or with why the backup cannot be shown unaffected
 * by relocations up to its end (one line).
 */
export async function finalRemap(o: FinalRemapOptions): Promise<string | undefined> {
  try {
    const target = await remapNow(o.remote, o.key, o.signal)
    await viewReaches(o.mountpoint, o.viewPid, target, o.catchUpMs ?? CATCH_UP_TIMEOUT_MS, o.signal)
    return undefined
  } catch (err) {
    return o.signal?.aborted ? (o.signal.reason as Error).message : (err as Error).message
  }
}

/** Where in the chain the remap left the image. */
async function remapNow(remote: RemoteSource, key: Buffer, signal?: AbortSignal): Promise<ChainPosition> {
  const client = new ConfigClient(remote.url, key, { ca: remote.ca })
  const abort = () => client.close() // ends the request in flight
  signal?.addEventListener('abort', abort)
  try {
    const r = await client.remap(FINAL_REMAP_TIMEOUT_MS).catch((err: Error) => {
      throw new Error(`the final remap failed (${err.message})`)
    })
    if (r.state === 'released') throw new Error(`frozen image ${r.configId} at ${remote.url} was released before the final remap`)
    if (r.seq === undefined) throw new Error(`the final remap published config ID ${r.configId}, but serve's delta chain does not reach it`)
    return { configId: r.configId, seq: r.seq }
  } finally {
    signal?.removeEventListener('abort', abort)
    client.close()
  }
}

async function viewReaches(mountpoint: string, viewPid: number, target: ChainPosition, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  const until = performance.now() + timeoutMs
  while (!signal?.aborted) {
    const state = loadState(mountpoint)
    const at = state?.pid === viewPid ? state.position : undefined
    if (at && reached(at, target)) return
    if (!processAlive(viewPid)) throw new Error(`the view process ${viewPid} is gone`)
    if (performance.now() >= until) {
      const where = at ? `it serves ${at.configId} (delta ${at.seq})` : 'it has not said where it is'
      throw new Error(`the view did not reach config ID ${target.configId} (delta ${target.seq}, the final remap's) within ${timeoutMs / 1000} s; ${where}`)
    }
    await new Promise((r) => setTimeout(r, CATCH_UP_POLL_MS))
  }
  throw signal.reason
}
