// Publishing a remap's delta (docs/remap.md): the delta file first (atomically), then the record
// (atomically), so a record's config ID always has its delta on storage; never over a record that
// changed meanwhile (a release, another remap). Shared by the VFS path and the bulk path.
import fs from 'node:fs'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import type { DataChecksums, Device } from '../manifest/types'
import { readRecord, writeRecord, type ConfigRecord } from '../configid/record'
import { writeDeltaFile } from '../delta/io'
import { signDelta } from '../delta/sign'
import type { DeltaContext } from '../delta/validate'
import { DELTA_FORMAT, DELTA_VERSION, type Delta, type DeltaFile } from '../delta/types'
import type { KnownDevices } from './devices'
import { StaleError } from '../errors'

export interface RemapResult {
  /** unchanged: nothing moved, nothing written. released: the record says released, nothing written. */
  state: 'unchanged' | 'remapped' | 'released'
  /** The config ID now current (the new one when remapped; the record's when released). */
  configId: string
  delta?: Delta
  deltaPath?: string
  /** Size of the delta file written, bytes. */
  deltaBytes?: number
  /** Size of the manifest file, bytes: what a full re-export would publish again. */
  manifestBytes: number
  /** How the image was mapped again: its bulk mapper (format 2), or file by file through the VFS; absent when released. */
  mapper?: 'bulk' | 'vfs'
  /** The bulk path: the fresh body equalled the manifest's byte for byte, or the inodes were joined (join.ts). */
  compared?: 'bytes' | 'inodes'
}

export interface NewDelta extends KnownDevices {
  manifestFile: string
  recordFile: string
  /** The record the remap started from. */
  record: ConfigRecord
  /** The map the delta follows: checked against with `context`. */
  context: DeltaContext
  files: DeltaFile[]
  newDevices: Device[]
  checksums?: DataChecksums
  key?: Buffer
  manifestBytes: number
  mapper: 'bulk' | 'vfs'
  compared?: RemapResult['compared']
}

export function publishDelta(n: NewDelta): RemapResult {
  const { context: ctx, record, recordFile } = n
  let delta: Delta = {
    format: DELTA_FORMAT, version: DELTA_VERSION, image: ctx.image, seq: ctx.seq, from: ctx.from,
    to: randomBytes(16).toString('hex'), createdAt: new Date().toISOString(),
    reason: n.newDevices.length > 0 || n.retired.length > 0 ? 'extents moved; devices changed' : 'extents moved',
    devices: n.newDevices,
    ...(n.checksums ? { dataChecksums: n.checksums } : {}),
    files: n.files,
    ...(n.proofs.length > 0 ? { proofs: n.proofs } : {}),
    ...(n.retired.length > 0 ? { retired: n.retired } : {}),
  }
  if (n.key) delta = signDelta(delta, n.key)
  const deltaPath = `${n.manifestFile}.delta-${ctx.seq}`
  writeDeltaFile(deltaPath, delta, ctx)
  const deltaBytes = fs.statSync(deltaPath).size

  // Release may have marked the record meanwhile: never turn a released image current again.
  const now = readRecord(recordFile)
  if (now.state !== 'current' || now.configId !== record.configId || (now.deltas ?? []).length !== (record.deltas ?? []).length) {
    fs.rmSync(deltaPath, { force: true })
    throw new StaleError(`config-ID record ${recordFile} changed while remapping (now ${now.state} ${now.configId}): nothing published`)
  }
  const name = path.dirname(deltaPath) === path.dirname(recordFile) ? path.basename(deltaPath) : deltaPath
  writeRecord(recordFile, delta.to, 'current', { deltas: [...(record.deltas ?? []), name], mapping: record.mapping })
  return { state: 'remapped', configId: delta.to, delta, deltaPath, deltaBytes, manifestBytes: n.manifestBytes, mapper: n.mapper, ...(n.compared ? { compared: n.compared } : {}) }
}
