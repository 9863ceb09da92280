// The merge-join of a bulk remap (docs/remap.md, "Remapping a bulk-mapped image"): the image's current
// map, read as the manifest's INODE records in ascending ino order overlaid with the files its deltas
// replaced, against a fresh mapping of the same image, also in ascending ino order. Pure: what it
// holds beyond the two records in hand is the files that changed and a bounded sample of extents per
// device, whatever the image's size.
//
// A frozen image's tree cannot change, so both sides must list the same inodes, of the same kinds,
// regular files of the same sizes; anything else fails the remap (a file skipped would be a file whose
// move nobody publishes).
import type { Extent, Inode } from '../manifest/types'
import type { DeltaFile } from '../delta/types'
import { locationOf, type FileLocation } from '../delta/chain'
import { ExportError } from '../errors'
import { SampleSpread } from '../device/fingerprint'

export interface JoinInput {
  /** The manifest's inodes, ascending ino. */
  was: Iterable<Inode>
  /** The fresh mapping's inodes, ascending ino; extents' `device` indexes the fresh mapping's disks. */
  now: Iterable<Inode>
  /** Files the delta chain replaced, by ino: their location now (the manifest's is superseded). */
  overlay: ReadonlyMap<number, FileLocation>
  /** A fresh disk's index in the current map, or -1 when it is none of the map's devices. */
  known: (disk: number) => number
  /** Devices the chain retired: no file of the current map may use them. */
  retired: ReadonlySet<number>
}

export interface JoinResult {
  /** Files whose extents (or carried content) differ, ascending ino; extents on fresh disk indexes. */
  changed: DeltaFile[]
  /** The changed files' locations before the delta (their sizes are what checking the delta needs). */
  before: Map<number, FileLocation>
  /** Fresh disks any extent of the map after the delta uses. */
  usedDisks: Set<number>
  /** Devices of the current map whose blocks the delta moves (a changed file had or has extents there). */
  touched: Set<number>
  /** Per device of the current map still used after the delta: a spread of the extents on it, to sample. */
  after: Map<number, SampleSpread>
  /** Regular files compared. */
  files: number
}

export function joinByIno(input: JoinInput): JoinResult {
  const out: JoinResult = { changed: [], before: new Map(), usedDisks: new Set(), touched: new Set(), after: new Map(), files: 0 }
  const was = input.was[Symbol.iterator]()
  const now = input.now[Symbol.iterator]()
  for (;;) {
    const a = was.next()
    const b = now.next()
    if (a.done && b.done) return out
    if (a.done) throw changedTree(`inode ${b.value.ino} is in the image mapped now, not in its manifest`)
    if (b.done) throw changedTree(`inode ${a.value.ino} of the manifest is not in the image mapped now`)
    joinOne(input, a.value, b.value, out)
  }
}

function joinOne(input: JoinInput, a: Inode, b: Inode, out: JoinResult): void {
  if (a.ino !== b.ino) {
    const [missing, where] = a.ino < b.ino ? [a.ino, 'the image mapped now'] : [b.ino, 'its manifest']
    throw changedTree(`inode ${missing} is not in ${where}`)
  }
  if (a.kind !== b.kind) throw changedTree(`inode ${a.ino} is a ${a.kind} in the manifest, a ${b.kind} now`)
  if (a.kind !== 'file') return
  if (a.size !== b.size) throw changedTree(`inode ${a.ino} is ${a.size} bytes in the manifest, ${b.size} now`)
  out.files++
  const was = input.overlay.get(a.ino) ?? locationOf(a)
  // Carried content (inline data, or data extfs carried) is in the manifest or a delta itself: nothing of it can move.
  if (was.inline !== undefined) return
  const extents = was.extents ?? []
  checkNotRetired(a.ino, extents, input.retired)
  if (b.inline !== undefined) {
    // Raw blocks before, carried now (as export carries it): the file's bytes are in the delta.
    for (const e of extents) touch(e, input.retired, out.touched, (d) => d)
    add(out, was, { ino: a.ino, inline: b.inline })
    return
  }
  const fresh = b.extents ?? []
  noteAfter(fresh, input.known, out)
  if (sameExtents(extents, fresh, input.known)) return
  for (const e of extents) touch(e, input.retired, out.touched, (d) => d)
  for (const e of fresh) touch(e, input.retired, out.touched, input.known)
  add(out, was, { ino: a.ino, extents: fresh })
}

function add(out: JoinResult, was: FileLocation, f: DeltaFile): void {
  out.changed.push(f)
  out.before.set(f.ino, was)
}

function changedTree(what: string): ExportError {
  return new ExportError(`the frozen image's tree differs from its manifest (${what}): cannot remap`)
}

/** readChain refuses a delta retiring a device a file still uses; a bulk remap sees every file only here. */
function checkNotRetired(ino: number, extents: Extent[], retired: ReadonlySet<number>): void {
  if (retired.size === 0) return
  for (const e of extents) {
    for (const d of [e.device, ...(e.copies ?? []).map((c) => c.device)]) {
      if (retired.has(d)) throw new ExportError(`inode ${ino} has an extent on device ${d}, which the delta chain retired: the chain is inconsistent`)
    }
  }
}

/** The devices of the current map an extent (or a copy of it) lies on, noted as touched. */
function touch(e: Extent, retired: ReadonlySet<number>, touched: Set<number>, known: (d: number) => number): void {
  const d = known(e.device)
  if (d >= 0 && !retired.has(d)) touched.add(d)
  for (const c of e.copies ?? []) {
    const k = known(c.device)
    if (k >= 0 && !retired.has(k)) touched.add(k)
  }
}

/**
 * The fresh extents are the map after the delta (unchanged files' are equal to them): note the disks
 * they use, and spread samples per known device, copies counted as extents at the copy's place
 * (extentsOnDevice's rule, src/device/fingerprint.ts).
 */
function noteAfter(fresh: Extent[], known: (d: number) => number, out: JoinResult): void {
  for (const e of fresh) {
    out.usedDisks.add(e.device)
    spreadOf(out, known(e.device))?.add(e)
    for (const c of e.copies ?? []) {
      out.usedDisks.add(c.device)
      spreadOf(out, known(c.device))?.add({ ...e, device: c.device, deviceOffset: c.deviceOffset, copies: undefined })
    }
  }
}

function spreadOf(out: JoinResult, device: number): SampleSpread | undefined {
  if (device < 0) return undefined // a new device: the delta's files are all its extents
  let s = out.after.get(device)
  if (s === undefined) out.after.set(device, s = new SampleSpread())
  return s
}

/**
 * Same places and lengths, and the same copies and csums (a mirror moving alone is a change too), the
 * fresh extents' disks read through `known`: a disk the map does not know never matches.
 */
export function sameExtents(was: Extent[], now: Extent[], known: (disk: number) => number): boolean {
  if (was.length !== now.length) return false
  for (let i = 0; i < now.length; i++) {
    const a = was[i]!
    const b = now[i]!
    if (a.fileOffset !== b.fileOffset || a.device !== known(b.device) || a.deviceOffset !== b.deviceOffset || a.length !== b.length) return false
    if (a.csums !== b.csums || !sameCopies(a, b, known)) return false
    if (a.compression !== b.compression || a.diskLength !== b.diskLength || a.decodedLength !== b.decodedLength || a.decodedOffset !== b.decodedOffset) return false
  }
  return true
}

function sameCopies(a: Extent, b: Extent, known: (disk: number) => number): boolean {
  const ca = a.copies ?? []
  const cb = b.copies ?? []
  return ca.length === cb.length && ca.every((c, k) => c.device === known(cb[k]!.device) && c.deviceOffset === cb[k]!.deviceOffset)
}
