// What `export`, `remap`, `verify`, `release` and `inspect` print: one object per command, which is
// the `--json` output as it stands and from which the sentence for people is built, so the two cannot
// say different things. The schemas are an interface: docs/json.md documents them, fields are only
// added within a schema version, and a removal or change of meaning takes a new one.
// Only types are imported here: this module loads with the CLI, before any command's own code.
import type { ExportSummary } from '../export/export'
import type { FrozenImage } from '../manifest/types'
import type { ReleaseResult } from '../frozen/release'
import type { RemapResult } from '../remap/remap'
import type { Summary } from './inspect'

/** What holds an export's image still: kind and mountpoint; for `snapshot`, the mechanism and its directory. */
export type HeldImage = Pick<FrozenImage, 'kind' | 'mountpoint' | 'fsType' | 'mechanism' | 'imagePath'>

export interface ExportJson {
  schema: 'extfs.export/1'
  manifest: string
  record: string
  configId: string
  format: 1 | 2
  mapper: 'bulk' | 'vfs'
  inodes: number
  frozenImage: HeldImage
  durationMs: number
}

export interface RemapJson {
  schema: 'extfs.remap/1'
  manifest: string
  state: 'unchanged' | 'remapped'
  /** The config ID current now: the new one when remapped. */
  configId: string
  mapper: 'bulk' | 'vfs'
  /** The bulk path only: the fresh map equalled the manifest's byte for byte, or was compared inode by inode. */
  compared?: 'bytes' | 'inodes'
  manifestBytes: number
  durationMs: number
  // remapped only:
  from?: string
  to?: string
  delta?: string
  seq?: number
  files?: number
  newDevices?: number
  retiredDevices?: number
  deltaBytes?: number
}

export interface VerifyJson {
  schema: 'extfs.verify/1'
  manifest: string
  /** The config ID under which the image is current: the manifest's or, after remaps, its record's. */
  configId: string
  manifestConfigId: string
  state: 'current'
  devices: { id: string; path: string }[]
}

export interface ReleaseJson {
  schema: 'extfs.release/1'
  manifest: string
  /** The config ID marked released (the record's: remaps may have moved it past the manifest's); absent when no record was found. */
  configId?: string
  /** Absent when released from the journal of an export that did not finish. */
  manifestConfigId?: string
  fromJournal: boolean
  frozenImage: Pick<FrozenImage, 'kind' | 'mountpoint'>
  thawed?: boolean
  removed?: string
}

export type InspectJson = { schema: 'extfs.inspect/1'; manifest: string } & Summary

export function exportResult(m: ExportSummary, durationMs: number): ExportJson {
  const f = m.frozenImage
  const frozenImage: HeldImage = { kind: f.kind, mountpoint: f.mountpoint, fsType: f.fsType }
  if (f.kind === 'snapshot') Object.assign(frozenImage, { mechanism: f.mechanism, imagePath: f.imagePath })
  return {
    schema: 'extfs.export/1', manifest: m.manifest, record: m.record, configId: m.configId, format: m.format, mapper: m.mapper,
    inodes: m.inodes, frozenImage, durationMs,
  }
}

/** Says what holds the image and how to end it. */
export function exportSentence(r: ExportJson): string {
  const f = r.frozenImage
  const held = f.kind === 'freeze' ? `; ${f.mountpoint} stays frozen until: extfs release ${r.manifest}`
    : f.kind === 'snapshot' ? `; image: ${f.mechanism} at ${f.imagePath}, kept until: extfs release ${r.manifest}` : ''
  return `exported ${r.inodes} inodes to ${r.manifest}, config ID ${r.configId}${held}`
}

/** A released image is no result: the CLI exits 7 before (StaleError). */
export function remapResult(manifest: string, r: RemapResult, durationMs: number): RemapJson {
  if (r.state === 'released' || !r.mapper) throw new Error(`remap of ${manifest}: no result to print for state ${r.state}`)
  const out: RemapJson = {
    schema: 'extfs.remap/1', manifest, state: r.state, configId: r.configId, mapper: r.mapper,
    ...(r.compared ? { compared: r.compared } : {}), manifestBytes: r.manifestBytes, durationMs,
  }
  const d = r.delta
  if (!d) return out
  return {
    ...out, from: d.from, to: d.to, delta: r.deltaPath, seq: d.seq, files: d.files.length, newDevices: d.devices.length,
    retiredDevices: d.retired?.length ?? 0, deltaBytes: r.deltaBytes,
  }
}

export function remapSentence(r: RemapJson): string {
  if (r.state === 'unchanged') return `unchanged ${r.configId}`
  return `remapped ${r.from} -> ${r.to}: ${r.files} files, ${r.newDevices} new devices, delta ${r.deltaBytes} bytes (manifest ${r.manifestBytes} bytes)`
}

export function verifyResult(manifest: string, image: { configId: string; manifest: { configId: string }; devices: { id: string; path: string }[] }): VerifyJson {
  return {
    schema: 'extfs.verify/1', manifest, configId: image.configId, manifestConfigId: image.manifest.configId, state: 'current',
    devices: image.devices.map((d) => ({ id: d.id, path: d.path })),
  }
}

export function verifySentence(r: VerifyJson): string {
  return `ok: config ID ${r.configId} is current; devices ${r.devices.map((d) => `${d.id}=${d.path}`).join(' ')} match`
}

export function releaseResult(manifest: string, r: ReleaseResult): ReleaseJson {
  return {
    schema: 'extfs.release/1', manifest, ...(r.configId ? { configId: r.configId } : {}),
    ...(r.manifestConfigId ? { manifestConfigId: r.manifestConfigId } : {}), fromJournal: r.fromJournal,
    frozenImage: r.frozenImage, ...(r.thawed !== undefined ? { thawed: r.thawed } : {}), ...(r.removed ? { removed: r.removed } : {}),
  }
}

export function releaseSentence(r: ReleaseJson): string {
  const parts = [r.configId ? `released ${r.configId}` : 'released the image of an export that did not finish']
  if (r.thawed !== undefined) parts.push(r.thawed ? `${r.frozenImage.mountpoint} thawed` : `${r.frozenImage.mountpoint} was not frozen`)
  if (r.removed) parts.push(`removed ${r.removed}`)
  return parts.join('; ')
}

export function inspectResult(manifest: string, s: Summary): InspectJson {
  return { schema: 'extfs.inspect/1', manifest, ...s }
}

/** The result on stdout: with --json its object, on one line; else its sentence (or lines). Nothing else goes to stdout. */
export function printResult<T>(json: boolean | undefined, result: T, sentence: (r: T) => string): void {
  process.stdout.write((json ? JSON.stringify(result) : sentence(result)) + '\n')
}
