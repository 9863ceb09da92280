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

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
