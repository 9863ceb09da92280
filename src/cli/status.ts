// `extfs status [<mountpoint>] [--json | --prometheus]`: every view on this host, as each view says
// it is (src/mover/control.ts). Views are found in the mount table (their source is extfs:<config id>),
// so a view whose process died still shows, as dead. The exit code is for monitoring checks:
// 0 all serving, 7 one is released / not current / unknown to its initiator / out of lease, 12 one
// does not answer.
import path from 'node:path'
import { ExitCode, MountpointError } from '../errors'
import { shardName } from '../view/engine'
import { readMountTable } from '../mapping/mountinfo'
import { NoAnswer, queryView, type ViewStatus } from '../mover/control'
import { loadState } from '../mover/state'
import { processAlive } from '../process'
import { printable } from '../manifest/names'

/** The version of `extfs status --json`'s object; fields are only added within it (docs/json.md). */
export const STATUS_SCHEMA = 'extfs.status/1'

/** A view that gave no status: `dead` when no process serves it, `not-answering` when one does but said nothing. */
export interface SilentView {
  mountpoint: string
  state: 'dead' | 'not-answering'
  reason: string
  pid?: number
}

export type ViewEntry = ViewStatus | SilentView

export interface StatusReport {
  schema: typeof STATUS_SCHEMA
  healthy: boolean
  views: ViewEntry[]
}

/** The views on this host (or the one at `mountpoint`), each asked at the same time. */
export async function gatherStatus(mountpoint?: string): Promise<StatusReport> {
  const mounts = readMountTable().filter((m) => m.source.startsWith('extfs:')).map((m) => m.mountpoint)
  let wanted = [...new Set(mounts)]
  if (mountpoint !== undefined) {
    const target = path.resolve(mountpoint)
    if (!wanted.includes(target)) throw new MountpointError(`${mountpoint} is not an extfs mount`)
    wanted = [target]
  }
  const views = await Promise.all(wanted.map(askView))
  return { schema: STATUS_SCHEMA, healthy: views.every((v) => v.state === 'serving'), views }
}

async function askView(mountpoint: string): Promise<ViewEntry> {
  try {
    return await queryView(mountpoint)
  } catch (err) {
    if (!(err instanceof NoAnswer)) throw err
    const pid = loadState(mountpoint)?.pid
    const alive = pid !== undefined && processAlive(pid)
    return {
      mountpoint, state: alive ? 'not-answering' : 'dead', ...(pid !== undefined ? { pid } : {}),
      reason: alive ? `process ${pid} serves it but gave no status: ${err.message}` : 'no process serves it (reads fail with ENOTCONN); clean up with: extfs umount ' + mountpoint,
    }
  }
}

/** 12 when a view does not answer, else 7 when one answers but serves nothing, else 0. */
export function statusExitCode(r: StatusReport): ExitCode {
  if (r.views.some((v) => v.state === 'dead' || v.state === 'not-answering')) return ExitCode.ViewDown
  if (!r.healthy) return ExitCode.Stale
  return ExitCode.Ok
}

// ------------------------------------------------------------------------------------------- text

export function formatStatus(r: StatusReport): string {
  if (r.views.length === 0) return 'no extfs views on this host'
  return r.views.map(formatView).join('\n')
}

function formatView(v: ViewEntry): string {
  const head = `${printable(v.mountpoint)}: ${v.state}`
  if (!('schema' in v)) return `${head}: ${printable(v.reason)}`
  const lines = [`${head}${v.reason ? `: ${printable(v.reason)}` : ''}`]
  lines.push(`  source ${printable(v.source)}, pid ${v.pid}, ${v.engine} engine, up ${duration(Date.now() - Date.parse(v.startedAt))}`)
  lines.push(`  config ID ${v.position.configId} (${v.position.seq} delta(s) after ${v.configId})${v.shard ? `, shard ${shardName(v.shard)}` : ''}`)
  if (v.lease) {
    const last = v.lease.lastAnswerMsAgo === undefined ? '' : `, initiator last answered ${duration(v.lease.lastAnswerMsAgo)} ago`
    lines.push(`  lease ${duration(v.lease.leftMs)} left${last}`)
  }
  if (v.served && v.image) {
    const s = v.served
    lines.push(`  opened ${count(s.filesOpened)} of ${count(v.image.files)} files (${count(s.opens)} opens), read ${bytes(s.readBytes)} in ${count(s.reads)} requests of ${bytes(v.image.bytes)}`)
    lines.push(`  ahead of readers: pushed ${bytes(s.pushedBytes)}, prefetched ${count(s.prefetchedFiles)} files (${bytes(s.prefetchedBytes)})`)
  }
  lines.push(`  refused ${count(v.refused)}, failed reads ${count(v.failedReads.requests)} (${count(v.failedReads.files)} files), tainted ${count(v.tainted)}`)
  return lines.join('\n')
}

function count(n: number): string {
  return n.toLocaleString('en-US')
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let i = 0
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`
}

function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  if (s < 120) return `${s} s`
  const m = Math.floor(s / 60)
  return m < 120 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`
}
