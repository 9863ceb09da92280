// Walk the exported paths of the frozen image and describe every inode: metadata, xattrs, and for
// regular files their physical extents (or carried content). The image is the frozen filesystem
// itself, a btrfs snapshot, or (clone sets) the live filesystem whose files are cloned as they are met.
import fs from 'node:fs'
import path from 'node:path'
import type { DirEntry, Inode, InodeKind, Timespec } from '../manifest/types'
import { linux } from '../linux'
import type { FileMapper } from '../mapping/mapper'
import { attrFlagsOf, type FileData, type OpenFile } from '../frozen/clone-set'
import { ExportError } from '../errors'
import { decodeName, hasByteEscapes, hostPath } from '../manifest/names'
import type { Counts, ProgressSink } from '../progress'

export interface WalkTarget {
  /** st_dev of the filesystem being exported: entries on other filesystems are skipped. */
  dev: bigint
  /** Maps each regular file to extents on raw disks. */
  mapper: FileMapper
  /** Called for what is skipped (other filesystems under the tree, files that vanished). */
  warn: (msg: string) => void
  /** Opens each regular file: in place, or by cloning it first (clone sets). */
  openFile: OpenFile
  /** Largest inline file whose content is carried in the manifest (--carry-max), bytes. */
  carryMax: number
  /** Absolute paths never descended into (the image directory of a clone set or snapshot). */
  skip: ReadonlySet<string>
  /**
   * The filesystem is live (clone sets): an entry may vanish between readdir and lstat or open; it is
   * skipped with a warning. On a frozen image that cannot happen, so it stays an error there.
   */
  live: boolean
  /** Told of every inode described. */
  progress?: ProgressSink
}

const NS = 1_000_000_000n

/** Seconds and 0 <= nanoseconds < 1e9, as the kernel keeps a time: before 1970 the seconds are the floor. */
function timespec(ns: bigint): Timespec {
  let sec = ns / NS
  let nsec = ns % NS // BigInt division truncates: a negative time has a negative remainder
  if (nsec < 0n) {
    sec -= 1n
    nsec += NS
  }
  return [Number(sec), Number(nsec)]
}

/** A count the manifest carries as a JSON number, which is exact only up to 2^53. */
function exact(value: bigint, what: string, file: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new ExportError(`${file}: ${what} ${value} is over 2^53, which manifest format 1 cannot carry exactly`)
  return Number(value)
}

function kindOf(st: fs.BigIntStats): InodeKind {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isFIFO()) return 'fifo'
  if (st.isCharacterDevice()) return 'char'
  if (st.isBlockDevice()) return 'block'
  return 'socket'
}

/** The xattrs of `file` by name (as decodeName carries it), values base64; `names` learns of byte names. */
function readXattrs(file: string, names: NameDecoder): Record<string, string> | undefined {
  const at = hostPath(file)
  let raw: Buffer[]
  try {
    raw = linux.listXattrs(at)
  } catch (err) {
    // ENOENT: deleted after it was described, which only a live filesystem (clone sets) allows.
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOTSUP' || code === 'ENOENT') return undefined
    throw new ExportError(`${file}: cannot list extended attributes: ${(err as Error).message}`)
  }
  if (raw.length === 0) return undefined
  const out: Record<string, string> = {}
  for (const bytes of raw) {
    const name = names.decode(bytes)
    try {
      out[name] = linux.getXattr(at, bytes).toString('base64')
    } catch (err) {
      throw new ExportError(`${file}: cannot read extended attribute ${JSON.stringify(name)}: ${(err as Error).message}`)
    }
  }
  return out
}

/** Decodes names (src/manifest/names.ts), noting whether any held bytes that are not UTF-8. */
class NameDecoder {
  /** Some name needed feature byte-names. */
  byteNames = false

  decode(raw: Buffer): string {
    const name = decodeName(raw)
    if (!this.byteNames && hasByteEscapes(name)) this.byteNames = true
    return name
  }
}

export class Walker {
  /** Inodes by source inode number: hard links meet here. */
  readonly inodes = new Map<number, Inode>()
  private readonly names = new NameDecoder()
  /** Mount points met (another filesystem or btrfs subvolume), waiting for inode numbers of their own. */
  private readonly mountPoints: { entry: DirEntry; inode: Inode }[] = []
  /** Inodes described and their allocated bytes, for progress. */
  readonly described: Counts = { files: 0, bytes: 0 }

  constructor(private readonly target: WalkTarget) {}

  /** Some name (entry, symlink target, xattr name) holds bytes that are not UTF-8: feature byte-names. */
  get byteNames(): boolean {
    return this.names.byteNames
  }

  /** Describe `file` (and, for a directory, everything below it); returns its inode number. */
  visit(file: string): number {
    // Iterative, so deep trees cannot overflow the stack: directories are finished after their children.
    const rootIno = this.describe(file, fs.lstatSync(hostPath(file), { bigint: true }))
    if (rootIno === undefined) throw new ExportError(`${file}: vanished while it was being exported`)
    const stack: { dir: string; inode: Inode }[] = []
    const first = this.inodes.get(rootIno)!
    if (first.kind === 'dir') stack.push({ dir: file, inode: first })
    while (stack.length > 0) {
      const { dir, inode } = stack.pop()!
      const entries: DirEntry[] = []
      for (const raw of this.readdir(dir)) {
        const name = this.names.decode(raw)
        const child = path.join(dir, name)
        if (this.target.skip.has(child)) continue
        const st = this.lstat(child)
        if (!st) continue
        if (st.dev !== this.target.dev) {
          this.target.warn(`${child}: on another filesystem (or btrfs subvolume): served as an empty directory`)
          entries.push(this.mountPoint(child, name, st))
          continue
        }
        const known = this.inodes.get(Number(st.ino))
        const ino = known ? known.ino : this.describe(child, st)
        if (ino === undefined) continue
        const childInode = this.inodes.get(ino)!
        if (known) childInode.nlink++ // another name of a hard-linked inode
        entries.push({ name, ino })
        if (childInode.kind === 'dir') stack.push({ dir: child, inode: childInode })
      }
      inode.entries = entries
    }
    return rootIno
  }

  /**
   * Gives each mount point met an inode number no inode of the image has (its own comes from another
   * filesystem, where a btrfs subvolume's root is always 256). After every visit().
   */
  numberMountPoints(): void {
    if (this.mountPoints.length === 0) return
    let next = this.freeIno()
    for (const { entry, inode } of this.mountPoints.splice(0)) {
      entry.ino = inode.ino = next++
      this.inodes.set(inode.ino, inode)
    }
  }

  /** An inode number above every one described (a loop: a spread of millions of keys overflows the stack). */
  freeIno(): number {
    let max = 0
    for (const ino of this.inodes.keys()) if (ino > max) max = ino
    return max + 1
  }

  /**
   * A directory where another filesystem is mounted: an empty directory with the metadata stat shows
   * there, as `tar --one-file-system` and `rsync -x` copy it. Numbered by numberMountPoints().
   */
  private mountPoint(file: string, name: string, st: fs.BigIntStats): DirEntry {
    const inode: Inode = {
      ino: 0, kind: 'dir', perm: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), nlink: 2, size: 0, blocks: 0,
      atime: timespec(st.atimeNs), mtime: timespec(st.mtimeNs), ctime: timespec(st.ctimeNs), entries: [],
    }
    const entry = { name, ino: 0 }
    this.mountPoints.push({ entry, inode })
    return entry
  }

  private readdir(dir: string): Buffer[] {
    try {
      return fs.readdirSync(hostPath(dir), { encoding: 'buffer' })
    } catch (err) {
      if (!this.vanished(err, dir)) throw err
      return []
    }
  }

  private lstat(file: string): fs.BigIntStats | undefined {
    try {
      return fs.lstatSync(hostPath(file), { bigint: true })
    } catch (err) {
      if (!this.vanished(err, file)) throw err
      return undefined
    }
  }

  /** chattr's flags of a directory; a regular file's came with its descriptor (FileData.attrs). */
  private dirAttrFlags(dir: string): number {
    let fd: number
    try {
      fd = fs.openSync(hostPath(dir), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW | fs.constants.O_NOATIME)
    } catch (err) {
      // A clone set's tree is live: the directory may be gone since it was listed.
      if (!this.target.live || (err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new ExportError(`${dir}: cannot open to read its attribute flags: ${(err as Error).message}`)
      }
      this.target.warn(`${dir}: vanished while the image was taken: exported without attribute flags`)
      return 0
    }
    try {
      return attrFlagsOf(fd, dir)
    } finally {
      fs.closeSync(fd)
    }
  }

  /** On a live filesystem a missing entry was deleted after readdir: warn and skip it. */
  private vanished(err: unknown, file: string): boolean {
    const code = (err as NodeJS.ErrnoException).code
    if (!this.target.live || (code !== 'ENOENT' && code !== 'ENOTDIR')) return false
    this.target.warn(`${file}: vanished while the image was taken, skipped`)
    return true
  }

  /** Returns the inode number, or undefined when a regular file vanished before it could be opened. */
  private describe(file: string, found: fs.BigIntStats): number | undefined {
    let st = found
    let data: FileData | undefined
    if (found.isFile()) {
      data = this.target.openFile(file, found)
      if (!data) {
        if (!this.target.live) throw new ExportError(`${file}: changed while the image was frozen`)
        this.target.warn(`${file}: vanished or replaced while the image was taken, skipped`)
        return undefined
      }
      st = data.meta
    }
    try {
      return this.describeWith(file, st, data)
    } finally {
      data?.close()
    }
  }

  private describeWith(file: string, st: fs.BigIntStats, data: FileData | undefined): number {
    const kind = kindOf(st)
    const inode: Inode = {
      ino: exact(st.ino, 'inode number', file),
      kind,
      perm: Number(st.mode) & 0o7777,
      uid: Number(st.uid),
      gid: Number(st.gid),
      // A file's nlink counts its names found in the exported tree (a copy of the tree has exactly
      // these; the walk counts them), a directory's is the initiator's (btrfs keeps 1).
      nlink: kind === 'dir' ? Number(st.nlink) : 1,
      // A clone's size and allocation, not the original's: they must agree with the extents mapped.
      size: exact((data?.data ?? st).size, 'size', file),
      blocks: exact((data?.data ?? st).blocks, 'block count', file),
      atime: timespec(st.atimeNs),
      mtime: timespec(st.mtimeNs),
      ctime: timespec(st.ctimeNs),
    }
    if (kind === 'char' || kind === 'block') inode.rdev = Number(st.rdev)
    if (kind === 'symlink') inode.target = this.names.decode(fs.readlinkSync(hostPath(file), { encoding: 'buffer' }))
    if (data) this.mapRegularFile(data.fd, file, inode)
    const attrs = data ? data.attrs : kind === 'dir' ? this.dirAttrFlags(file) : 0
    if (attrs !== 0) inode.attrs = attrs
    const xattrs = readXattrs(file, this.names)
    if (xattrs) inode.xattrs = xattrs
    this.inodes.set(inode.ino, inode)
    this.described.files++
    this.described.bytes += inode.blocks * 512
    this.target.progress?.update(this.described)
    return inode.ino
  }

  /** `fd` is the file itself, or its clone: the bytes the manifest describes. */
  private mapRegularFile(fd: number, file: string, inode: Inode): void {
    const m = this.target.mapper.map(fd, file, inode.size)
    if (m.kind === 'extents') {
      inode.extents = m.extents
      return
    }
    // Inline in the filesystem's metadata: on no raw block, so the content itself goes into the manifest.
    const max = this.target.carryMax
    if (inode.size > max) {
      throw new ExportError(`${file}: ${m.why} data of ${inode.size} bytes is over the ${max}-byte limit for carrying it in the manifest (--carry-max)`)
    }
    const content = Buffer.alloc(inode.size)
    const n = fs.readSync(fd, content, 0, inode.size, 0)
    if (n !== inode.size) throw new ExportError(`${file}: short read of ${m.why} data (${n} of ${inode.size} bytes)`)
    inode.inline = content.toString('base64')
  }
}
