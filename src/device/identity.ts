// Stable identity of a raw block device: what lets the mover find the same disk under another name.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import type { DeviceIdentity } from '../manifest/types'

function readSys(file: string): string | undefined {
  try {
    const v = fs.readFileSync(file, 'utf8').trim()
    return v || undefined
  } catch {
    return undefined
  }
}

/**
 * Probe a whole-disk device. `blkid -p` reads the superblock / partition table itself (no udev cache),
 * giving the filesystem UUID of a whole-device filesystem or the partition-table UUID of a partitioned
 * disk; WWN and serial come from sysfs where the transport reports them.
 */
export function probeIdentity(devicePath: string): DeviceIdentity {
  const name = path.basename(devicePath)
  const id: DeviceIdentity = {}
  const wwn = readSys(`/sys/class/block/${name}/wwid`) ?? readSys(`/sys/class/block/${name}/device/wwid`)
  const serial = readSys(`/sys/class/block/${name}/serial`) ?? readSys(`/sys/class/block/${name}/device/serial`)
  if (wwn) id.wwn = wwn
  if (serial) id.serial = serial
  let out = ''
  try {
    out = execFileSync('blkid', ['-p', '-o', 'export', devicePath], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  } catch {
    // blkid exits 2 when it finds nothing to identify: not an error, just no UUIDs.
  }
  for (const line of out.split('\n')) {
    const [key, value] = line.split('=', 2)
    if (key === 'UUID' && value) id.fsUuid = value
    if (key === 'PTUUID' && value) id.ptUuid = value
    // btrfs: every member device carries the filesystem's UUID; UUID_SUB tells the members apart.
    if (key === 'UUID_SUB' && value) id.devUuid = value
  }
  return id
}

/** True when two identities share at least one stable identifier and contradict on none. */
export function identitiesMatch(recorded: DeviceIdentity, found: DeviceIdentity): boolean {
  let shared = 0
  for (const key of ['wwn', 'serial', 'ptUuid', 'fsUuid', 'devUuid'] as const) {
    const a = recorded[key]
    const b = found[key]
    if (a === undefined || b === undefined) continue
    if (a !== b) return false
    shared++
  }
  return shared > 0
}
