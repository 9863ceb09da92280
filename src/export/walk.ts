// Walk the exported paths on the frozen filesystem and describe every inode: metadata, xattrs, and
// for regular files their physical extents (or inline content).
import fs from 'node:fs'
import path from 'node:path'
import type { DirEntry, Inode, InodeKind, Timespec } from '../manifest/types'
import { native } from '../native'
import type { FileMapper } from '../mapping/mapper'
import { ExportError } from '../errors'

/** Inline content is carried in the manifest only up to this size (ext4 inline data is far smaller). */
const MAX_INLINE = 64 * 1024

export interface WalkTarget {
  /** st_dev of the filesystem being exported: entries on other filesystems are skipped. */
  dev: bigint
  /** Maps each regular file to extents on raw disks. */
  mapper: FileMapper
  /** Called for what is skipped (other filesystems under the tree). */
  warn: (msg: string) => void
}

const NS = 1_000_000_000n

function timespec(ns: bigint): Timespec {
  return [Number(ns / NS), Number(ns % NS)]
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

/** Names are carried as UTF-8 strings; a name that does not survive the round trip cannot be exported. */
function utf8Name(raw: Buffer, dir: string): string {
  const name = raw.toString('utf8')
  if (!Buffer.from(name, 'utf8').equals(raw)) throw new ExportError(`${dir}: entry name is not valid UTF-8 (${raw.toString('hex')}); not supported`)
  return name
}

function readXattrs(file: string): Record<string, string> | undefined {
  let names: string[]
  try {
    names = native.listXattrs(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTSUP') return undefined
    throw new ExportError(`${file}: cannot list extended attributes: ${(err as Error).message}`)
  }
  if (names.length === 0) return undefined
  const out: Record<string, string> = {}
  for (const name of names) out[name] = native.getXattr(file, name).toString('base64')
  return out
}

export class Walker {
  /** Inodes by source inode number: hard links meet here. */
  readonly inodes = new Map<number, Inode>()

  constructor(private readonly target: WalkTarget) {}

  /** Describe `file` (and, for a directory, everything below it); returns its inode number. */
  visit(file: string): number {
    // Iterative, so deep trees cannot overflow the stack: directories are finished after their children.
    const rootIno = this.describe(file, fs.lstatSync(file, { bigint: true }))
    const stack: { dir: string; inode: Inode }[] = []
    const first = this.inodes.get(rootIno)!
    if (first.kind === 'dir') stack.push({ dir: file, inode: first })
    while (stack.length > 0) {
      const { dir, inode } = stack.pop()!
      const entries: DirEntry[] = []
      for (const raw of fs.readdirSync(dir, { encoding: 'buffer' })) {
        const name = utf8Name(raw, dir)
        const child = path.join(dir, name)
        const st = fs.lstatSync(child, { bigint: true })
        if (st.dev !== this.target.dev) {
          this.target.warn(`${child}: on another filesystem, skipped`)
          continue
        }
        const known = this.inodes.get(Number(st.ino))
        const ino = known ? known.ino : this.describe(child, st)
        const childInode = this.inodes.get(ino)!
        if (known) childInode.nlink++ // another name of a hard-linked inode
        entries.push({ name, ino })
        if (childInode.kind === 'dir') stack.push({ dir: child, inode: childInode })
      }
      inode.entries = entries
      inode.nlink = 2 + entries.filter((e) => this.inodes.get(e.ino)!.kind === 'dir').length
    }
    return rootIno
  }

  private describe(file: string, st: fs.BigIntStats): number {
    const kind = kindOf(st)
    const inode: Inode = {
      ino: Number(st.ino),
      kind,
      perm: Number(st.mode) & 0o7777,
      uid: Number(st.uid),
      gid: Number(st.gid),
      // nlink counts the names found in the exported tree (a faithful copy of it), not outside it.
      nlink: 1,
      size: Number(st.size),
      blocks: Number(st.blocks),
      atime: timespec(st.atimeNs),
      mtime: timespec(st.mtimeNs),
      ctime: timespec(st.ctimeNs),
    }
    if (kind === 'char' || kind === 'block') inode.rdev = Number(st.rdev)
    if (kind === 'symlink') inode.target = utf8Name(fs.readlinkSync(file, { encoding: 'buffer' }), file)
    if (kind === 'file') this.mapRegularFile(file, inode)
    const xattrs = readXattrs(file)
    if (xattrs) inode.xattrs = xattrs
    this.inodes.set(inode.ino, inode)
    return inode.ino
  }

  private mapRegularFile(file: string, inode: Inode): void {
    // O_NOATIME: reading inline data must not touch the frozen filesystem's metadata.
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOATIME)
    try {
      const m = this.target.mapper.map(fd, file, inode.size)
      if (m.kind === 'extents') {
        inode.extents = m.extents
        return
      }
      if (inode.size > MAX_INLINE) throw new ExportError(`${file}: ${m.why} data of ${inode.size} bytes is over the ${MAX_INLINE}-byte limit for carrying it in the manifest`)
      const data = Buffer.alloc(inode.size)
      const n = fs.readSync(fd, data, 0, inode.size, 0)
      if (n !== inode.size) throw new ExportError(`${file}: short read of ${m.why} data (${n} of ${inode.size} bytes)`)
      inode.inline = data.toString('base64')
    } finally {
      fs.closeSync(fd)
    }
  }
}
