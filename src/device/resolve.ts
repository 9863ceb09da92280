// Finding the manifest's devices on the mover and proving them, before anything is served.
import fs from 'node:fs'
import { bytesOnDevice, type Device, type Manifest } from '../manifest/types'
import { listRawDevices } from '../mapping/blockdev'
import { identitiesMatch, probeIdentity } from './identity'
import { RawDevice } from './reader'
import { firstMismatch } from './fingerprint'
import { DeviceError } from '../errors'

/**
 * Bytes of the device the manifest's extents and fingerprints reach: a device smaller than this cannot
 * serve. `extentEnd` is the end of the furthest extent when the loader computed it (a streamed
 * manifest keeps no inodes); otherwise the extents are scanned.
 */
function bytesNeeded(manifest: Manifest, index: number, extentEnd?: number): number {
  let end = extentEnd ?? 0
  if (extentEnd === undefined) {
    for (const inode of manifest.inodes) {
      for (const e of inode.extents ?? []) if (e.device === index) end = Math.max(end, e.deviceOffset + bytesOnDevice(e))
    }
  }
  return end
}

/** Scan this host's whole-disk devices for one of the same size whose stable identifiers agree. */
function findByIdentity(device: Device): string {
  const candidates = listRawDevices().filter((d) => d.size === device.size)
  const matches = candidates.filter((d) => identitiesMatch(device.identity, probeIdentity(d.path)))
  if (matches.length === 0) {
    throw new DeviceError(`device ${device.id} (${device.size} bytes, ${JSON.stringify(device.identity)}) not found on this host; name it with --device ${device.id}=/dev/...`)
  }
  if (matches.length > 1) {
    throw new DeviceError(`device ${device.id} matches several devices (${matches.map((m) => m.path).join(', ')}); name one with --device ${device.id}=/dev/...`)
  }
  return matches[0].path
}

/**
 * Open `device` at `devicePath` and prove it is the exported one: big enough for `extentEnd` and every
 * fingerprint, and every fingerprint matching.
 */
function openAndProve(device: Device, devicePath: string, extentEnd: number): RawDevice {
  if (!fs.existsSync(devicePath)) throw new DeviceError(`device ${device.id}: ${devicePath} does not exist`)
  const raw = RawDevice.open(device.id, devicePath)
  try {
    const needed = device.fingerprints.reduce((end, f) => Math.max(end, f.offset + f.length), extentEnd)
    if (raw.size < needed) throw new DeviceError(`device ${device.id}: ${devicePath} is too small (${raw.size} bytes, the image needs ${needed})`)
    const bad = firstMismatch(raw, device.fingerprints)
    if (bad) throw new DeviceError(`device ${device.id}: ${devicePath} is not the exported device (fingerprint at byte ${bad.offset} differs)`)
    return raw
  } catch (err) {
    raw.close()
    throw err
  }
}

/** One device met after mounting (a delta's new device): found by `path` or by identity, then proven. */
export function resolveDevice(device: Device, path: string | undefined, extentEnd: number): RawDevice {
  return openAndProve(device, path ?? findByIdentity(device), extentEnd)
}

/** The manifest's devices as the current map knows them: the newest fingerprints, and which are retired. */
export interface CurrentDevices {
  /** Indexed like manifest.devices (a delta's new devices may follow: they are the follower's). */
  devices: readonly Device[]
  retired: ReadonlySet<number>
}

/**
 * Resolve every device of the manifest (`overrides` maps device id to path) and prove it with the
 * current map's fingerprints; all or nothing. A retired device is not looked for (it may be wiped or
 * gone): it gets a placeholder no read can go through. `extentEnds`: per device, the end of its
 * furthest extent in the manifest, when already known.
 */
export function resolveDevices(manifest: Manifest, current: CurrentDevices, overrides: Map<string, string>, extentEnds?: readonly number[]): RawDevice[] {
  for (const id of overrides.keys()) {
    if (!current.devices.some((d) => d.id === id)) throw new DeviceError(`--device ${id}: the manifest has no device ${id}${current.devices.length > manifest.devices.length ? ', nor do its deltas' : ''}`)
  }
  const opened: RawDevice[] = []
  try {
    manifest.devices.forEach((recorded, index) => {
      if (current.retired.has(index)) return void opened.push(RawDevice.retired(recorded.id))
      const device = current.devices[index]!
      opened.push(openAndProve(device, overrides.get(device.id) ?? findByIdentity(device), bytesNeeded(manifest, index, extentEnds?.[index])))
    })
    return opened
  } catch (err) {
    for (const d of opened) d.close()
    throw err
  }
}
