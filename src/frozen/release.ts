// `extfs release`: end the frozen image. The record is marked released first, so movers refuse new
// opens before the image can change under them; then the filesystem is thawed (freeze) or the snapshot
// or clone set is removed (snapshot), and finally the export's journal goes.
//
// Release works from the manifest or, when export died before writing one, from the journal beside it
// (`<manifest>.frozen-image`). Both are data: only the image directory export creates, carrying its
// marker, is ever removed, so nothing of the owner's is touched. Releasing twice is harmless.
import fs from 'node:fs'
import type { FrozenImage, ManifestHeader } from '../manifest/types'
import { readRecord, recordPath, writeRecord } from '../configid/record'
import { thawFilesystem } from './freeze'
import { discardImage } from './discard'
import { FrozenImageJournal, journalPathOf, readJournal, removeJournal } from './journal'
import { mountOf } from '../mapping/mountinfo'
import { probeIdentity } from '../device/identity'
import { ExtfsError, ExitCode } from '../errors'

export interface ReleaseResult {
  /** The config ID marked released: the record's (remaps may have moved it past the manifest's); none when no record was found. */
  configId?: string
  /** The manifest's config ID; none when released from the journal of an export that did not finish. */
  manifestConfigId?: string
  /** What held the image, from the manifest or the journal. */
  frozenImage: Pick<FrozenImage, 'kind' | 'mountpoint'>
  /** freeze: false when the filesystem was not frozen any more (released before, or thawed by hand). */
  thawed?: boolean
  /** snapshot: the image directory removed now, if it was still there. */
  removed?: string
  /** True when only the journal of an unfinished export was found. */
  fromJournal: boolean
}

/**
 * Mark the record released, keeping the config ID and delta chain it has reached (remap moved it past
 * the manifest's); a record that cannot be read is replaced by one naming the manifest's config ID.
 * Returns the config ID marked.
 */
function markReleased(file: string, manifestConfigId: string): string {
  let record
  try {
    record = readRecord(file)
  } catch {
    record = undefined
  }
  const configId = record?.configId ?? manifestConfigId
  writeRecord(file, configId, 'released', { deltas: record?.deltas, mapping: record?.mapping })
  return configId
}

/** The image must still be mounted where export found it, and be the same filesystem. */
function checkStillMounted(image: Pick<FrozenImage, 'mountpoint' | 'fsType' | 'fsUuid'>): void {
  const mount = mountOf(image.mountpoint)
  const what = `${image.mountpoint} is no longer the ${image.fsType} filesystem this image `
  if (!mount || mount.mountpoint !== image.mountpoint || mount.fsType !== image.fsType) {
    throw new ExtfsError(ExitCode.Export, `${what}was taken of; mount it there and release again`)
  }
  if (image.fsUuid && mount.source.startsWith('/dev/') && probeIdentity(mount.source).fsUuid !== image.fsUuid) {
    throw new ExtfsError(ExitCode.Export, `${what}was taken of (its UUID differs); mount it there and release again`)
  }
}

/** Thaw, or remove the snapshot image; the record has been marked already. */
function endImage(image: FrozenImage | FrozenImageJournal, imageId: string | undefined): Pick<ReleaseResult, 'thawed' | 'removed'> {
  if (image.kind === 'freeze') return { thawed: thawFilesystem(image.mountpoint) }
  if (image.kind === 'snapshot' && image.imagePath && imageId) {
    const removed = discardImage({ mountpoint: image.mountpoint, imageId, imagePath: image.imagePath, mechanism: image.mechanism })
    return removed ? { removed: image.imagePath } : {}
  }
  return {}
}

/** The journal belongs to this manifest's image (and not to a later, unrelated export). */
function journalMatches(j: FrozenImageJournal, image: FrozenImage): boolean {
  if (j.kind !== image.kind || j.mountpoint !== image.mountpoint) return false
  return image.kind !== 'snapshot' || j.imageId === image.imageId
}

/**
 * Publish "released", then end the image. `graceMs`: wait that long in between, so that a mover
 * following `extfs serve` that did not hear of the release (cut off from the initiator) has seen its
 * lease run out before the image's blocks can be reused (docs/remap.md, "The lease").
 */
export function releaseImage(manifestPath: string, manifest: ManifestHeader, graceMs = 0): ReleaseResult {
  const image = manifest.frozenImage
  if (image.kind !== 'none') checkStillMounted(image)
  const configId = markReleased(recordPath(manifestPath, manifest.configRecord), manifest.configId)
  if (graceMs > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, graceMs) // a plain synchronous sleep
  const result: ReleaseResult = { configId, manifestConfigId: manifest.configId, frozenImage: { kind: image.kind, mountpoint: image.mountpoint }, fromJournal: false, ...endImage(image, image.imageId) }
  const journalPath = journalPathOf(manifestPath)
  const journal = readJournal(journalPath)
  if (journal && journalMatches(journal, image)) removeJournal(journalPath)
  return result
}

/** Release after an export that died before writing its manifest; undefined when there is no journal either. */
export function releaseFromJournal(manifestPath: string): ReleaseResult | undefined {
  const journalPath = journalPathOf(manifestPath)
  const journal = readJournal(journalPath)
  if (!journal) return undefined
  checkStillMounted(journal)
  // Export writes the record last, so it rarely exists here; when it does, it must say released.
  let configId: string | undefined
  try {
    const r = JSON.parse(fs.readFileSync(journal.record, 'utf8')) as { configId?: unknown }
    if (typeof r.configId === 'string') configId = r.configId
  } catch {
    // No record (the usual case), or one we cannot read: nothing to mark.
  }
  if (configId) writeRecord(journal.record, configId, 'released')
  const result: ReleaseResult = { configId, frozenImage: { kind: journal.kind, mountpoint: journal.mountpoint }, fromJournal: true, ...endImage(journal, journal.imageId) }
  removeJournal(journalPath)
  return result
}
