// Remaps off serve's event loop. A remap maps every file of an image again (synchronous FIEMAP, seconds
// for a large image); run on serve's own thread it would hold back every lease answer meanwhile, and a
// late lease answer is a wrong answer: the mover's lease runs out and its opens are refused mid-backup.
// So the real remapper runs in one worker thread (remap-thread.ts), one remap at a time, and keeps
// there what each image's remaps read (src/remap/cache.ts), bounded in bytes.
import path from 'node:path'
import { Worker } from 'node:worker_threads'
import type { RemapResult } from '../remap/remap'

/**
 * Re-maps one image and publishes what moved (writes the delta, then the record). Injected so the
 * server can be tested without relocating real blocks: the tests' fakes write real delta files and
 * records, and may answer at once.
 */
export interface Remapper {
  remap(manifestPath: string, opts: { key?: Buffer; warn: (m: string) => void }): RemapResult | Promise<RemapResult>
  /** Stops whatever the remapper runs; remaps asked for later fail. */
  close?(): Promise<void>
  /** Bytes kept between remaps after the last one (about: RemapCache.approxBytes). */
  keptBytes?(): number
}

/** What serve keeps between remaps of all its images, bytes (--remap-cache). */
export const DEFAULT_REMAP_CACHE_BYTES = 512 * 1024 * 1024

/** A request to the remap thread, and its answers. */
export interface RemapRequest { id: number; manifestPath: string; key?: Uint8Array }
export type RemapReply =
  | { id: number; warn: string }
  | { id: number; result: RemapResult; keptBytes: number }
  | { id: number; error: string }

interface Pending {
  resolve: (r: RemapResult) => void
  reject: (e: Error) => void
  warn: (m: string) => void
}

/** The real remapper (src/remap/remap.ts) in a worker thread, started at the first remap. */
export class WorkerRemapper implements Remapper {
  private worker?: Worker
  private nextId = 1
  private readonly pending = new Map<number, Pending>()
  private closed = false
  private kept = 0

  constructor(private readonly cacheBytes = DEFAULT_REMAP_CACHE_BYTES) {}

  remap(manifestPath: string, opts: { key?: Buffer; warn: (m: string) => void }): Promise<RemapResult> {
    if (this.closed) return Promise.reject(new Error('serve is stopping'))
    const worker = this.worker ?? this.start()
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, warn: opts.warn })
      const req: RemapRequest = { id, manifestPath, key: opts.key }
      worker.postMessage(req)
    })
  }

  keptBytes(): number {
    return this.kept
  }

  async close(): Promise<void> {
    this.closed = true
    const w = this.worker
    this.worker = undefined
    if (w) await w.terminate()
    this.failAll(new Error('serve is stopping'))
  }

  private start(): Worker {
    // The thread's module sits beside this one: .js when built, .ts under the tests' loader (which a
    // worker inherits through execArgv).
    const file = path.join(__dirname, `remap-thread${path.extname(__filename)}`)
    const w = new Worker(file, { workerData: { cacheBytes: this.cacheBytes } })
    w.on('message', (m: RemapReply) => this.onReply(m))
    w.on('error', (err) => this.lost(w, err))
    w.on('exit', (code) => this.lost(w, new Error(`remap thread exited with code ${code}`)))
    this.worker = w
    return w
  }

  private onReply(m: RemapReply): void {
    const p = this.pending.get(m.id)
    if (!p) return
    if ('warn' in m) return p.warn(m.warn)
    this.pending.delete(m.id)
    if ('result' in m) {
      this.kept = m.keptBytes
      p.resolve(m.result)
    } else p.reject(new Error(m.error))
  }

  /** The thread died (a bug, or out of memory): its remaps fail; the next remap starts a new one. */
  private lost(w: Worker, err: Error): void {
    if (this.worker !== w) return
    this.worker = undefined
    this.failAll(err)
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err)
    this.pending.clear()
  }
}
