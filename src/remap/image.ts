// What both remap paths check of the image before mapping it again (src/remap/remap.ts, bulk.ts):
// its mount is still the filesystem export saw, its record says how export mapped it, and the
// filesystem still checksums data as the image does.
import type { DataChecksums, ManifestHeader } from '../manifest/types'
import type { RecordMapping } from '../configid/record'
import { readMountTable, type MountEntry } from '../mapping/mountinfo'
import { probeIdentity } from '../device/identity'
import { DEFAULT_CARRY_MAX } from '../export/export'
import { ExportError } from '../errors'

/** The filesystem still checksums data as it did at export (it is the same filesystem: it must). */
export function checkSameChecksums(now: DataChecksums | undefined, image: DataChecksums | undefined, manifestFile: string): void {
  if (now === undefined || image === undefined) return // no mirrored extent now, or an image without them
  if (now.algorithm !== image.algorithm || now.sectorSize !== image.sectorSize) {
    throw new ExportError(`${manifestFile}: the filesystem now checksums data with ${now.algorithm} per ${now.sectorSize} bytes, the image with ${image.algorithm} per ${image.sectorSize}: cannot remap`)
  }
}

export function defaultMapping(warn: (m: string) => void, recordFile: string): RecordMapping {
  warn(`${recordFile} does not say how export mapped the image (written by an older extfs): remapping without --through-loop, carry max ${DEFAULT_CARRY_MAX}`)
  return { throughLoop: false, carryMax: DEFAULT_CARRY_MAX }
}

/** The mount the image lives on, still the filesystem export saw (type, and UUID where it can tell). */
export function imageMount(m: ManifestHeader): MountEntry {
  const f = m.frozenImage
  const mount = readMountTable().filter((e) => e.mountpoint === f.mountpoint).pop()
  if (!mount) throw new ExportError(`${f.mountpoint} is not mounted: cannot remap its image`)
  if (mount.fsType !== f.fsType) throw new ExportError(`${f.mountpoint} is now ${mount.fsType}, the image was on ${f.fsType}: cannot remap`)
  if (f.fsUuid && mount.source.startsWith('/dev/')) {
    // After a btrfs replace the mount source may name the old, wiped member: no UUID there is no contradiction.
    const now = probeIdentity(mount.source).fsUuid
    if (now !== undefined && now !== f.fsUuid) throw new ExportError(`${f.mountpoint} holds filesystem ${now}, the image was on ${f.fsUuid}: cannot remap`)
  }
  return mount
}
