// The tree of a streamed manifest, kept compact while the inodes stream by and walked once they are
// all in, with the walk and the messages every reader shares (validate.ts walkInodeTree): what needs
// the whole manifest (duplicate inode numbers, the root, entries naming inodes, one parent per
// directory, no cycles, no orphans). Per inode 9 bytes (number, kind) and 8 (its entries' range), per
// entry 8 (the inode it names) and its name's bytes + 10 (for messages), and 9 per inode for the walk:
// about 50 bytes per file of a tree of small files.
import type { InodeSink } from './stream'
import type { Inode } from './types'
import { bad, walkInodeTree, type InodeTree } from './validate'
import { decodeName, encodeName } from './names'

const KIND_NAMES = ['file', 'dir', 'symlink', 'fifo', 'char', 'block', 'socket'] as const
const KIND_CODE = new Map<string, number>(KIND_NAMES.map((k, i) => [k, i]))

/** A growable typed array (doubling: these are small beside a packed tree). */
class Grow<T extends Float64Array | Uint32Array | Uint16Array | Uint8Array> {
  length = 0
  constructor(public a: T) {}
  push(v: number): void {
    if (this.length === this.a.length) {
      const b = new (this.a.constructor as new (n: number) => T)(this.a.length * 2)
      b.set(this.a)
      this.a = b
    }
    this.a[this.length++] = v
  }
  /** The pushed values only. */
  get values(): T {
    return this.a.subarray(0, this.length) as T
  }
}

/** Entry names back to back, in chunks of 1 MiB (growing never copies), read back for messages only. */
class NameBytes {
  private static readonly CHUNK = 1 << 20
  private readonly chunks: Buffer[] = []
  private used = NameBytes.CHUNK

  /** Stores `name` (at most 255 bytes: it never spans chunks); returns where. */
  add(name: Buffer): number {
    if (this.used + name.length > NameBytes.CHUNK) {
      this.chunks.push(Buffer.allocUnsafe(NameBytes.CHUNK))
      this.used = 0
    }
    const at = (this.chunks.length - 1) * NameBytes.CHUNK + this.used
    this.used += name.copy(this.chunks[this.chunks.length - 1]!, this.used)
    return at
  }

  read(at: number, len: number): Buffer {
    const o = at % NameBytes.CHUNK
    return this.chunks[Math.floor(at / NameBytes.CHUNK)]!.subarray(o, o + len)
  }
}

/** The InodeSink that checks the tree: finish() throws ManifestError on the first problem. */
export class TreeSink implements InodeSink {
  private readonly inos = new Grow(new Float64Array(1024))
  private readonly kinds = new Grow(new Uint8Array(1024))
  /** Per inode: its first entry (a directory's) and their count. */
  private readonly first = new Grow(new Uint32Array(1024))
  private readonly count = new Grow(new Uint32Array(1024))
  private readonly entryIno = new Grow(new Float64Array(1024))
  private readonly nameOff = new Grow(new Float64Array(1024))
  private readonly nameLen = new Grow(new Uint16Array(1024))
  private readonly names = new NameBytes()

  begin(): void {}

  inode(n: Inode): void {
    this.inos.push(n.ino)
    this.kinds.push(KIND_CODE.get(n.kind)!)
    this.first.push(this.entryIno.length)
    this.count.push(n.entries?.length ?? 0)
    for (const e of n.entries ?? []) {
      const name = encodeName(e.name)
      this.entryIno.push(e.ino)
      this.nameOff.push(this.names.add(name))
      this.nameLen.push(name.length)
    }
  }

  finish(root: number): void {
    const inos = this.inos.values
    const kinds = this.kinds.values
    const first = this.first.values
    const count = this.count.values
    const entryIno = this.entryIno.values
    const tree: InodeTree = {
      count: inos.length,
      ino: (i) => inos[i]!,
      kind: (i) => KIND_NAMES[kinds[i]!]!,
      indexOf: inoIndex(inos),
      entryCount: (i) => count[i]!,
      entryIno: (i, k) => entryIno[first[i]! + k]!,
      entryName: (i, k) => decodeName(this.names.read(this.nameOff.a[first[i]! + k]!, this.nameLen.a[first[i]! + k]!)),
    }
    walkInodeTree(tree, root)
  }
}

/**
 * ino → position, refusing an ino listed twice (the first repeat in list order, as validate.ts does).
 * Strictly increasing numbers (the writer's usual order) need no index: binary search; dense numbers
 * a flat table; sparse ones a Map.
 */
function inoIndex(inos: Float64Array): (ino: number) => number {
  const n = inos.length
  let sorted = true
  let max = 0
  for (let i = 0; i < n; i++) {
    const v = inos[i]!
    if (i > 0 && v <= inos[i - 1]!) sorted = false
    if (v > max) max = v
  }
  if (sorted) {
    return (ino) => {
      let lo = 0
      let hi = n
      while (lo < hi) {
        const mid = (lo + hi) >>> 1
        const v = inos[mid]!
        if (v === ino) return mid
        if (v < ino) lo = mid + 1
        else hi = mid
      }
      return -1
    }
  }
  if (max <= 4 * n + 1024) {
    const table = new Int32Array(max + 1)
    for (let i = 0; i < n; i++) {
      const ino = inos[i]!
      if (table[ino] !== 0) bad(`inode ${ino}`, 'is listed twice')
      table[ino] = i + 1
    }
    return (ino) => (Number.isInteger(ino) && ino >= 0 && ino < table.length ? table[ino]! - 1 : -1)
  }
  const map = new Map<number, number>()
  for (let i = 0; i < n; i++) {
    const ino = inos[i]!
    if (map.has(ino)) bad(`inode ${ino}`, 'is listed twice')
    map.set(ino, i)
  }
  return (ino) => map.get(ino) ?? -1
}
