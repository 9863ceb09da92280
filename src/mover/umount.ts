// `extfs umount`: a real (not lazy) unmount, the same for a live view and a dead one (whose every
// access fails with ENOTCONN); then wait for the serving process, which notices and exits.
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { readMountTable } from '../mapping/mountinfo'
import { clearState, loadState } from './state'
import { processAlive } from '../process'
import { removeMirrorsOf } from './remote'
import { MountpointError } from '../errors'

const WAIT_MS = 15000
const STEP_MS = 50

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** Whether an extfs view (live or dead) is mounted at `mountpoint`. */
export function extfsMountAt(mountpoint: string): boolean {
  return readMountTable().some((m) => m.mountpoint === mountpoint && m.source.startsWith('extfs:'))
}

export async function unmountView(target: string): Promise<void> {
  const mountpoint = path.resolve(target)
  if (!extfsMountAt(mountpoint)) throw new MountpointError(`${target} is not an extfs mount`)
  // A real (not lazy) unmount: refused while the view is in use, so nobody's backup is cut off.
  // Works the same for a live view and a dead one (whose process is gone).
  try {
    execFileSync('umount', [mountpoint], { stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? '').trim()
    if (/busy/i.test(stderr)) throw new MountpointError(`${target} is busy (a process is using it); the view keeps serving`)
    throw new MountpointError(`cannot unmount ${target}: ${stderr || (err as Error).message}`)
  }
  // The serving process notices within a second and exits; wait for it, so the view is fully gone.
  const state = loadState(mountpoint)
  if (!state) return
  for (let waited = 0; waited < WAIT_MS && processAlive(state.pid); waited += STEP_MS) await sleep(STEP_MS)
  if (processAlive(state.pid)) process.kill(state.pid, 'SIGTERM')
  clearState(mountpoint, state.pid)
  // A view following serve that was killed left its mirror of the initiator's answers behind.
  if (!processAlive(state.pid)) removeMirrorsOf(state.pid)
}
