// Which process serves which mountpoint: a small file per view under /run/extfs, so that
// `extfs umount` can ask the serving process to unmount and exit, and `extfs backup` can see where in
// the config-ID chain its view is. Beside it, the view's status socket (control.ts).
import fs from 'node:fs'
import path from 'node:path'
import { createHash } from 'node:crypto'
import { writeFileAtomic } from '../manifest/io'

const STATE_DIR = '/run/extfs'

export interface ViewState {
  pid: number
  mountpoint: string
  manifest: string
  /**
   * Where the view is in the config-ID chain (docs/remap.md): the config ID it serves under and how
   * many deltas lead there (0: the manifest's map). Rewritten whenever the view followed a delta, so
   * `extfs backup` can wait for its view to have applied what its final remap published.
   */
  position?: ChainPosition
}

export interface ChainPosition {
  configId: string
  seq: number
}

/** Whether `at` is `target` or a later config ID of the same chain. */
export function reached(at: ChainPosition, target: ChainPosition): boolean {
  return at.seq > target.seq || (at.seq === target.seq && at.configId === target.configId)
}

function stateFile(mountpoint: string): string {
  return path.join(STATE_DIR, createHash('sha256').update(mountpoint).digest('hex').slice(0, 24) + '.json')
}

/** Where the view at `mountpoint` answers for its status (src/mover/control.ts). */
export function controlSocket(mountpoint: string): string {
  return stateFile(mountpoint).replace(/\.json$/, '.sock')
}

/** Atomically: `extfs backup` reads it while the view rewrites it. */
export function saveState(state: ViewState): void {
  fs.mkdirSync(STATE_DIR, { recursive: true })
  writeFileAtomic(stateFile(state.mountpoint), JSON.stringify(state))
}

export function loadState(mountpoint: string): ViewState | undefined {
  try {
    return JSON.parse(fs.readFileSync(stateFile(mountpoint), 'utf8'))
  } catch {
    return undefined
  }
}

/** The view's state file and status socket, when they are process `pid`'s (a view killed with -9 leaves both). */
export function clearState(mountpoint: string, pid: number): void {
  const state = loadState(mountpoint)
  if (!state || state.pid !== pid) return
  fs.rmSync(controlSocket(mountpoint), { force: true })
  fs.rmSync(stateFile(mountpoint), { force: true })
}

/** What a view leaves behind when it stops, for `extfs backup`: the files read under a superseded map. */
export interface ViewReport {
  pid: number
  tainted: string[]
  /** Opens and reads the view refused (image not current, lease expired) or failed (device errors). */
  refused: number
  /** Why the first of them was refused (or, with none refused, failed). */
  firstRefusal?: string
  /** Reads that failed (device errors), of how many files, and the paths of the first of them (at most 100). */
  failedReads?: { requests: number; files: number; paths: string[] }
  /**
   * Files whose metadata a reader asked for and the view could not pass through the kernel (POSIX
   * ACLs larger than it reads: docs/design.md), the first REPORT_FILES of them, and how many in all.
   */
  unservedMetadata?: { count: number; files: string[] }
}

/** How many files a report names at most: the backup's line names fewer, the view's log all. */
export const REPORT_FILES = 100

function reportFile(mountpoint: string): string {
  return stateFile(mountpoint).replace(/\.json$/, '.report.json')
}

export function saveReport(mountpoint: string, report: ViewReport): void {
  fs.mkdirSync(STATE_DIR, { recursive: true })
  fs.writeFileSync(reportFile(mountpoint), JSON.stringify(report))
}

/** The report of the view that served `mountpoint` as process `pid`, removed once read. */
export function takeReport(mountpoint: string, pid: number): ViewReport | undefined {
  const file = reportFile(mountpoint)
  try {
    const report = JSON.parse(fs.readFileSync(file, 'utf8')) as ViewReport
    fs.rmSync(file, { force: true })
    return report.pid === pid ? report : undefined
  } catch {
    return undefined
  }
}
