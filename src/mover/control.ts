// A view answers for itself: each serving process listens on a Unix socket beside its state file
// (/run/extfs, root only) and writes its status, one JSON object, to whoever connects, then closes.
// `extfs status` and `extfs backup`'s progress read it there: what a view says about itself cannot
// be guessed from files (a state file outlives a process killed with -9; counters live in its memory).
// The socket takes no request, so a connecting process has nothing to send that could be misread.
import fs from 'node:fs'
import net from 'node:net'
import { controlSocket } from './state'
import type { Shard } from '../view/engine'

/** The version of ViewStatus; fields are only added within it (docs/json.md). */
export const VIEW_STATUS_SCHEMA = 'extfs.view/1'

/**
 * serving: opens are served. released: the initiator ended the frozen image. not-current: the record
 * names a config ID the view cannot follow (refused opens). unknown: from serve, the initiator answered
 * that it cannot prove the image current (its state and record lost or damaged), so opens and reads
 * are refused until it answers current again. lease-expired: from serve, the initiator has not
 * answered for longer than the lease, so opens and reads wait for it and are refused.
 */
export type ViewState = 'serving' | 'released' | 'not-current' | 'unknown' | 'lease-expired'

export interface ViewStatus {
  schema: typeof VIEW_STATUS_SCHEMA
  pid: number
  mountpoint: string
  /** The manifest file, or the serve URL. */
  source: string
  engine: 'native' | 'fuse-native'
  startedAt: string
  /** The manifest's config ID, and where the view is in its chain (seq: deltas applied). */
  configId: string
  position: { configId: string; seq: number }
  /** A shard view's place in its split (docs/shards.md; index 0-based); absent for a whole view. */
  shard?: Shard
  state: ViewState
  /** Why, when not serving. */
  reason?: string
  /** From serve only: how long opens are still served without asking, and when the initiator last answered. */
  lease?: { leftMs: number; lastAnswerMsAgo?: number; unreachableMs?: number }
  /** The native engine's counters; absent from a view the fuse-native engine serves. */
  image?: { files: number; bytes: number }
  served?: {
    opens: number
    filesOpened: number
    reads: number
    readBytes: number
    /** Bytes stored in the page cache ahead of the reader: push-ahead of large files, prefetch of small ones. */
    pushedBytes: number
    prefetchedFiles: number
    prefetchedBytes: number
  }
  refused: number
  failedReads: { requests: number; files: number }
  tainted: number
  /** Prefetch's window and what it holds now (bytes). */
  prefetch?: { window: number; pending: number }
}

/** Longest status answer read: a view's is a few hundred bytes. */
const MAX_ANSWER = 64 * 1024

/**
 * Listen for status requests of the view at `mountpoint`; `collect` is called per connection. The
 * socket file is replaced if a dead process left one (the state file's pid proved us its owner).
 */
export function serveStatus(mountpoint: string, collect: () => ViewStatus, onError: (err: Error) => void): () => void {
  const file = controlSocket(mountpoint)
  fs.rmSync(file, { force: true })
  const server = net.createServer((sock) => {
    sock.on('error', () => undefined) // the asker went away: nothing to do
    let answer: string
    try {
      answer = JSON.stringify(collect()) + '\n'
    } catch (err) {
      onError(err as Error)
      return void sock.destroy()
    }
    sock.end(answer)
  })
  server.on('error', onError)
  const oldMask = process.umask(0o177) // root only: counters and paths are not everyone's business
  try {
    server.listen(file)
  } finally {
    process.umask(oldMask)
  }
  server.unref() // the view's life is its mount, not this socket
  return () => {
    server.close()
    fs.rmSync(file, { force: true })
  }
}

/** Why a view gave no status: its socket is missing or refused (dead), or it did not answer in time. */
export class NoAnswer extends Error {}

/** The status of the view at `mountpoint`, from the view itself. */
export function queryView(mountpoint: string, timeoutMs = 2000): Promise<ViewStatus> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection(controlSocket(mountpoint))
    const chunks: Buffer[] = []
    let size = 0
    const fail = (why: string) => {
      sock.destroy()
      reject(new NoAnswer(why))
    }
    sock.setTimeout(timeoutMs, () => fail(`no answer within ${timeoutMs} ms`))
    sock.on('error', (err: NodeJS.ErrnoException) => fail(err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? 'no process answers for it' : err.message))
    sock.on('data', (b: Buffer) => {
      size += b.length
      if (size > MAX_ANSWER) return fail(`answer over ${MAX_ANSWER} bytes`)
      chunks.push(b)
    })
    sock.on('end', () => {
      try {
        resolve(parseStatus(Buffer.concat(chunks).toString('utf8')))
      } catch (err) {
        reject(new NoAnswer(`unreadable answer: ${(err as Error).message}`))
      }
    })
  })
}

/** A status answer, checked for the fields readers rely on. */
export function parseStatus(text: string): ViewStatus {
  const s = JSON.parse(text) as ViewStatus
  if (s === null || typeof s !== 'object' || s.schema !== VIEW_STATUS_SCHEMA) throw new Error(`not an ${VIEW_STATUS_SCHEMA} answer`)
  const counts = [s.pid, s.refused, s.tainted, ...(s.image ? [s.image.files, s.image.bytes] : []), ...(s.served ? Object.values(s.served) : [])]
  if (typeof s.mountpoint !== 'string' || typeof s.state !== 'string' || counts.some((n) => !Number.isSafeInteger(n) || n < 0)) {
    throw new Error('fields missing or not counts')
  }
  return s
}
