// The remap worker thread (started by remap-worker.ts): remaps one image at a time, as asked, and keeps
// each image's RemapCache between its remaps in one LRU bounded in bytes, so that a serve with many
// large images holds at most --remap-cache of them; an image whose cache was dropped is read again
// whole at its next remap (slower, never wrong: the cache is checked against the files before use).
import { parentPort, workerData } from 'node:worker_threads'
import { LRUCache } from 'lru-cache'
import { remapImage, type RemapResult } from '../remap/remap'
import { RemapCache } from '../remap/cache'
import type { RemapReply, RemapRequest } from './remap-worker'

const port = parentPort!
const caches = new LRUCache<string, RemapCache>({
  maxSize: (workerData as { cacheBytes: number }).cacheBytes,
  sizeCalculation: (c) => Math.max(1, c.approxBytes()),
})

port.on('message', (req: RemapRequest) => {
  const cache = caches.get(req.manifestPath) ?? new RemapCache()
  const warn = (m: string) => port.postMessage({ id: req.id, warn: m } satisfies RemapReply)
  let reply: RemapReply
  try {
    const key = req.key ? Buffer.from(req.key) : undefined
    reply = { id: req.id, result: withoutDelta(remapImage(req.manifestPath, { key, warn, cache })), keptBytes: 0 }
  } catch (err) {
    reply = { id: req.id, error: (err as Error).message }
  }
  // Set again after every remap, failed or not: its size changed (a path table kept, deltas read). A
  // cache larger than the whole bound is dropped.
  caches.set(req.manifestPath, cache)
  if ('result' in reply) reply.keptBytes = caches.calculatedSize
  port.postMessage(reply)
})

/** The delta itself stays here: serve publishes it from the file remap wrote. */
function withoutDelta(r: RemapResult): RemapResult {
  const { delta: _delta, ...rest } = r
  return rest
}
