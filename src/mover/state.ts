// Which process serves which mountpoint: a small file per view under /run/extfs, so that
// `extfs umount` can ask the serving process to unmount and exit.
import fs from 'node:fs'
import path from 'node:path'
import { createHash } from 'node:crypto'

const STATE_DIR = '/run/extfs'

export interface ViewState {
  pid: number
  mountpoint: string
  manifest: string
}

function stateFile(mountpoint: string): string {
  return path.join(STATE_DIR, createHash('sha256').update(mountpoint).digest('hex').slice(0, 24) + '.json')
}

export function saveState(state: ViewState): void {
  fs.mkdirSync(STATE_DIR, { recursive: true })
  fs.writeFileSync(stateFile(state.mountpoint), JSON.stringify(state))
}

export function loadState(mountpoint: string): ViewState | undefined {
  try {
    return JSON.parse(fs.readFileSync(stateFile(mountpoint), 'utf8'))
  } catch {
    return undefined
  }
}

export function clearState(mountpoint: string, pid: number): void {
  const state = loadState(mountpoint)
  if (state && state.pid === pid) fs.rmSync(stateFile(mountpoint), { force: true })
}

/** What a view leaves behind when it stops, for `extfs backup`: the files read under a superseded map. */
export interface ViewReport {
  pid: number
  tainted: string[]
  /** Opens and reads the view refused (image not current, lease expired) or failed (device errors). */
  refused: number
}

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

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
