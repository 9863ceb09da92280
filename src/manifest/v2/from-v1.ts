// A version 1 manifest re-encoded as a version 2 body, so that the view has one packer of its tables:
// the C loader (native/view/load2*.c) for both versions. The body goes to two files the caller owns
// (unlinked temporary files): DIR records to `dirs` and INODE records to `inodes`, as the inodes
// stream by (a v1 manifest interleaves them; v2 puts every DIR record first), then `inodes` is
// appended to `dirs`. Nothing proportional to the tree is held here: the records are on disk.
//
// INODE records must ascend by inode number. The writer's manifests do (src/export/export.ts sorts
// them); for one that does not, the stream stops at the first descent (Unsorted) and the caller
// streams it again into a SpooledInodes sink: each inode's JSON appended to a spool file, 20 bytes
// per inode of index, encoded in order at the end.
import fs from 'node:fs'
import { bad } from '../validate'
import type { InodeSink } from '../stream'
import type { Inode } from '../types'
import type { TrailerCounts } from './format'
import { BodyStream } from './write'

/** The manifest's inodes do not ascend: stream it again into SpooledInodes. */
export class Unsorted extends Error {}

/**
 * `n` encoded by `encode`, a RangeError of the encoder turned into the one-line error of a bad
 * manifest, naming the inode. Version 2 stores times, device offsets and entries' inode numbers as
 * differences from their neighbours, below 2^52 each (manifest-v2.md); version 1 takes values up to
 * 2^53 - 1, so a manifest with values 2^52 apart (a time 140 million years from the others, a device
 * of 4 PiB) is refused at mount rather than served wrong.
 */
export function encoding(n: Inode, encode: () => void): void {
  try {
    encode()
  } catch (err) {
    if (!(err instanceof RangeError)) throw err
    bad(`inode ${n.ino}`, `cannot be loaded: the view's tables take differences below 2^52 between neighbouring times, device offsets and entries' inode numbers (${err.message})`)
  }
}

/** DIR records to `dirsFd`, INODE records to `inodesFd` as they come, while they ascend. */
export class V2BodySink implements InodeSink {
  private readonly dirs: BodyStream
  private readonly inodes: BodyStream
  private lastIno = 0

  constructor(dirsFd: number, inodesFd: number, private readonly stopWhenUnsorted = true) {
    this.dirs = new BodyStream(dirsFd)
    this.inodes = new BodyStream(inodesFd)
  }

  begin(): void {}

  inode(n: Inode): void {
    if (n.kind === 'dir') encoding(n, () => this.dirs.dir(n.ino, n.entries ?? []))
    if (!this.stopWhenUnsorted) return
    if (n.ino < this.lastIno) throw new Unsorted(`inode ${n.ino} after ${this.lastIno}`)
    if (n.ino === this.lastIno) return // listed twice: the tree check refuses it once the stream ends
    this.lastIno = n.ino
    encoding(n, () => this.inodes.inode(n))
  }

  finish(): void {
    this.dirs.flush()
    this.inodes.flush()
  }

  counts(inodes = this.inodes.counts.inodes): TrailerCounts {
    return { inodes, dirs: this.dirs.counts.dirs, entries: this.dirs.counts.entries }
  }

  /** For SpooledInodes: the INODE records' encoder. */
  inodeStream(): BodyStream {
    return this.inodes
  }
}

/**
 * Inodes in any order: each one's JSON appended to `spoolFd`; encode() writes them as INODE records
 * by ascending number. Per inode 20 bytes (number, offset, length) beside the spool.
 */
export class SpooledInodes implements InodeSink {
  private inos = new Float64Array(1024)
  private offs = new Float64Array(1024)
  private lens = new Uint32Array(1024)
  private n = 0
  private at = 0

  constructor(private readonly spoolFd: number) {}

  begin(): void {}
  finish(): void {}

  inode(n: Inode): void {
    if (this.n === this.inos.length) this.grow()
    const json = Buffer.from(JSON.stringify(n), 'utf8')
    fs.writeSync(this.spoolFd, json, 0, json.length, this.at)
    this.inos[this.n] = n.ino
    this.offs[this.n] = this.at
    this.lens[this.n] = json.length
    this.n++
    this.at += json.length
  }

  /** Every inode spooled, as INODE records in ascending order, into `out`; returns how many. */
  encode(out: BodyStream): number {
    const order = new Uint32Array(this.n)
    for (let i = 0; i < this.n; i++) order[i] = i
    const inos = this.inos
    order.sort((a, b) => inos[a]! - inos[b]!)
    for (const i of order) {
      const json = Buffer.allocUnsafe(this.lens[i]!)
      fs.readSync(this.spoolFd, json, 0, json.length, this.offs[i]!)
      const n = JSON.parse(json.toString('utf8')) as Inode
      encoding(n, () => out.inode(n))
    }
    out.flush()
    return this.n
  }

  private grow(): void {
    const size = this.inos.length * 2
    const inos = new Float64Array(size)
    inos.set(this.inos)
    const offs = new Float64Array(size)
    offs.set(this.offs)
    const lens = new Uint32Array(size)
    lens.set(this.lens)
    this.inos = inos
    this.offs = offs
    this.lens = lens
  }
}

/** Every sink sees every call, in order. */
export function bothSinks(...sinks: InodeSink[]): InodeSink {
  return {
    begin: (header, facts) => sinks.forEach((s) => s.begin(header, facts)),
    inode: (n, i) => sinks.forEach((s) => s.inode(n, i)),
    finish: (root) => sinks.forEach((s) => s.finish(root)),
  }
}
