// What a serving view says about itself (`extfs status`, src/mover/control.ts): gathered from the
// engine's counters, the chain follower and, from serve, the lease, at the moment it is asked.
import type { Manifest } from '../manifest/types'
import type { Shard, ViewEngine } from '../view/engine'
import { NativeEngine } from '../native-engine/native-engine'
import type { ChainFollower } from './follow'
import type { RemoteImage } from './remote'
import { VIEW_STATUS_SCHEMA, type ViewState, type ViewStatus } from './control'
import { readRecord, type ConfigCheck } from '../configid/record'

export interface ViewParts {
  engine: ViewEngine
  follower?: ChainFollower
  remote?: RemoteImage
  /** The last look at the record (shared storage) or the mirror (serve). */
  health: { released?: boolean; refused?: string }
  manifest: Manifest
  source: string
  mountpoint: string
  startedAt: Date
  shard?: Shard
}

export function describeView(v: ViewParts): ViewStatus {
  const refusals = v.engine.refusedRequests()
  const lease = v.remote?.leaseStatus()
  const { state, reason } = judge(v.health, lease)
  const status: ViewStatus = {
    schema: VIEW_STATUS_SCHEMA,
    pid: process.pid,
    mountpoint: v.mountpoint,
    source: v.source,
    engine: v.engine instanceof NativeEngine ? 'native' : 'fuse-native',
    startedAt: v.startedAt.toISOString(),
    configId: v.manifest.configId,
    position: { configId: v.follower?.current ?? v.manifest.configId, seq: v.follower?.applied ?? 0 },
    ...(v.shard ? { shard: v.shard } : {}),
    state,
    ...(reason ? { reason } : {}),
    ...(lease ? { lease: { leftMs: lease.leftMs, lastAnswerMsAgo: lease.lastAnswerMsAgo, unreachableMs: lease.unreachableMs } } : {}),
    refused: refusals.count,
    failedReads: { requests: refusals.failedReads.requests, files: refusals.failedReads.files },
    tainted: v.engine.taintedFiles().length,
  }
  if (v.engine instanceof NativeEngine) Object.assign(status, counters(v.engine))
  return status
}

function counters(engine: NativeEngine): Pick<ViewStatus, 'image' | 'served' | 'prefetch'> {
  const s = engine.viewStats()
  const p = engine.prefetchStats()
  return {
    image: { files: s.filesTotal, bytes: s.bytesTotal },
    served: {
      opens: s.opens, filesOpened: s.filesOpened, reads: s.reads, readBytes: s.readBytes,
      pushedBytes: s.pushedBytes, prefetchedFiles: p.storedFiles, prefetchedBytes: p.storedBytes,
    },
    prefetch: { window: p.window, pending: p.pending },
  }
}

/**
 * A view without a chain follower (the fuse-native engine) is judged by its config check on the
 * record, as its next open would be.
 */
export function recordHealth(config: ConfigCheck): ViewParts['health'] {
  const verdict = config.check()
  if (verdict instanceof Promise || verdict.ok) return {}
  try {
    if (readRecord(config.file).state === 'released') return { released: true }
  } catch {
    // unreadable: not current, for the reason the check gave
  }
  return { refused: verdict.reason }
}

/**
 * Released is final and said first; then a record the view cannot follow; then, from serve, an
 * initiator that cannot prove the image current (it answered "unknown": its lease ended then), and a
 * lapsed lease.
 */
export function judge(health: ViewParts['health'], lease?: ReturnType<RemoteImage['leaseStatus']>): { state: ViewState; reason?: string } {
  if (health.released || lease?.released) return { state: 'released', reason: 'the initiator released the frozen image' }
  if (health.refused) return { state: 'not-current', reason: health.refused }
  if (lease?.unknown !== undefined) return { state: 'unknown', reason: lease.unknown }
  if (lease && lease.leftMs === 0) {
    const since = lease.unreachableMs === undefined ? '' : ` (unreachable for ${Math.round(lease.unreachableMs / 1000)} s)`
    return { state: 'lease-expired', reason: `the initiator has not answered within the lease${since}: opens and reads are refused until it does` }
  }
  return { state: 'serving' }
}
