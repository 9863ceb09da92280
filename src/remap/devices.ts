// The devices of a remap: which disks the fresh mapping met are devices of the current map, the new
// devices a delta adds (fingerprinted), and what it says about the old ones (proofs, retirement).
// Shared by the VFS path (remap.ts) and the bulk path (bulk.ts).
import type { DataChecksums, Device, Extent } from '../manifest/types'
import type { RawDisk } from '../mapping/span'
import type { DeltaFile, DeviceProof } from '../delta/types'
import { identitiesMatch, probeIdentity } from '../device/identity'
import { RawDevice } from '../device/reader'
import { extentsOnDevice, takeFingerprints } from '../device/fingerprint'

/**
 * For each disk the mapper met, its index in the new map: a device of the current map keeps its index
 * when it is the same device node on this host, of the same size, with a matching identity. Anything
 * else is new (-1 here) — a replaced device included: btrfs replace gives the new member the old one's
 * UUIDs, so identity alone would not tell them apart.
 */
export function assignDevices(disks: RawDisk[], devices: Device[], retired: ReadonlySet<number>): number[] {
  return disks.map((disk) => {
    const found = probeIdentity(disk.path)
    return devices.findIndex((d, i) => !retired.has(i) && d.hint === disk.path && d.size === disk.size &&
      (identitiesMatch(d.identity, found) || (isEmpty(d.identity) && isEmpty(found))))
  })
}

function isEmpty(o: object): boolean {
  return Object.keys(o).length === 0
}

/** Index of mapper disk `i` in the new map: known devices keep theirs; new ones follow, in mapper order. */
export function globalIndex(disks: number[], known: number): (i: number) => number {
  const next: number[] = []
  let n = known
  for (const d of disks) next.push(d >= 0 ? d : n++)
  return (i) => next[i]!
}

/** A mapped extent with the new map's device indexes, for its copies too. */
export function inNewMap(e: Extent, index: (i: number) => number): Extent {
  const out = { ...e, device: index(e.device) }
  if (e.copies) out.copies = e.copies.map((c) => ({ ...c, device: index(c.device) }))
  return out
}

/** The delta's new devices, in index order, fingerprinted over the delta's extents on each. */
export function describeNewDevices(rawDisks: RawDisk[], disks: number[], devices: Device[], files: DeltaFile[], checksums: DataChecksums | undefined): Device[] {
  const index = globalIndex(disks, devices.length)
  const ids = new Set(devices.map((d) => d.id))
  const out: Device[] = []
  for (let i = 0; i < rawDisks.length; i++) {
    if (disks[i]! >= 0) continue
    const disk = rawDisks[i]!
    const at = index(i)
    let id = `d${at}`
    for (let k = 1; ids.has(id); k++) id = `d${at}-${k}`
    ids.add(id)
    const extents = extentsOnDevice(files.flatMap((f) => f.extents ?? []), at)
    const raw = RawDevice.open(id, disk.path)
    try {
      out.push({ id, size: disk.size, identity: probeIdentity(disk.path), fingerprints: takeFingerprints(raw, extents, checksums), hint: disk.path })
    } finally {
      raw.close()
    }
  }
  return out
}

/** What a delta says about the devices the map had before it. */
export interface KnownDevices {
  proofs: DeviceProof[]
  retired: number[]
}

/** The map before the delta, as far as its devices go. */
export interface DevicesBefore {
  devices: readonly Device[]
  retired: ReadonlySet<number>
}

/**
 * What the delta says about the devices the map had before it. A device whose blocks it moves (`touched`:
 * a file of the delta had or has extents or copies there) is proved again: fingerprints over the
 * extents and copies on it after the delta (`after(d)`: all of them, or an even spread of them), since
 * the old samples may lie in blocks the image gave up and that now hold other data; with data checksums
 * only over sectors that verify, as export samples. A device no extent or copy uses any more (`after(d)`
 * empty) is retired: a mover mounting later need not find it (btrfs replace leaves the old member
 * outside the filesystem, perhaps wiped). Devices the delta does not touch keep their proof: their
 * blocks did not move.
 */
export function knownDeviceChanges(
  map: DevicesBefore, touched: ReadonlySet<number>, after: (d: number) => Extent[], rawDisks: RawDisk[], disks: number[],
  checksums: DataChecksums | undefined, warn: (m: string) => void,
): KnownDevices {
  const retired: number[] = []
  const proofs: DeviceProof[] = []
  for (let d = 0; d < map.devices.length; d++) {
    if (map.retired.has(d)) continue
    const on = after(d)
    if (on.length === 0) retired.push(d)
    else if (touched.has(d)) {
      const disk = rawDisks[disks.indexOf(d)]! // a device with extents after the remap is one the mapper met
      const raw = RawDevice.open(map.devices[d]!.id, disk.path)
      try {
        const fingerprints = takeFingerprints(raw, on, checksums)
        // Every sample failed its checksum: no proof rather than one of damaged bytes; the old one stands.
        if (fingerprints.length > 0) proofs.push({ device: d, fingerprints })
        else warn(`device ${d} (${disk.path}): no sampled block verifies against its checksums: its fingerprints are not renewed`)
      } finally {
        raw.close()
      }
    }
  }
  return { proofs, retired }
}
