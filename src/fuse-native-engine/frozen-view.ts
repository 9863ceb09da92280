// The frozen view: a FUSE-free, read-only filesystem over a validated manifest. The FUSE adapter
// (src/fuse-native-engine/) is a thin shell around this; a native engine can replace the adapter, not this contract.
import type { Inode, Manifest, Timespec } from '../manifest/types'
import type { RawDevice } from '../device/reader'
import type { ConfigWatch } from '../configid/record'
import { planRead } from '../extents/plan'
import { ExitCode, ExtfsError, ViewError } from '../errors'
import type { Logger } from 'pino'
import { Errno } from '../view/errno'
import { Refusals, type RefusalSummary } from '../view/refusals'

const TYPE_BITS: Record<Inode['kind'], number> = {
  file: 0o100000, dir: 0o040000, symlink: 0o120000, fifo: 0o010000, char: 0o020000, block: 0o060000, socket: 0o140000,
}

export interface Attr {
  ino: number
  /** st_mode: file type bits | permission bits. */
  mode: number
  nlink: number
  uid: number
  gid: number
  rdev: number
  size: number
  /** st_blocks in 512-byte units, as on the initiator. */
  blocks: number
  blksize: number
  atime: Timespec
  mtime: Timespec
  ctime: Timespec
}

export interface StatFs {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  favail: number
  namemax: number
}

interface Node {
  inode: Inode
  /** Directories: children by name, built once at load. */
  children?: Map<string, number>
  /** Inline files: the content, decoded once. */
  inline?: Buffer
}

export class FrozenView {
  private readonly nodes = new Map<number, Node>()
  readonly rootIno: number
  private readonly usage: StatFs
  private readonly refusals = new Refusals()

  constructor(
    private readonly manifest: Manifest,
    /** Open devices, indexed like manifest.devices. */
    private readonly devices: RawDevice[],
    private readonly config: ConfigWatch,
    private readonly log: Logger,
  ) {
    // This engine has no decoder of btrfs's compressed extents: it would serve their encoded bytes.
    if (manifest.features.includes('compressed-extents')) {
      throw new ExtfsError(ExitCode.Usage, 'this manifest has compressed extents (feature "compressed-extents"), which only the native engine decodes: unset EXTFS_ENGINE=fuse-native')
    }
    // This engine reads copy 0 unverified: serving such a manifest would bring back the stale-copy bug.
    if (manifest.features.includes('data-checksums')) {
      throw new ExtfsError(ExitCode.Usage, 'this manifest has data checksums (feature "data-checksums"), which only the native engine verifies: unset EXTFS_ENGINE=fuse-native')
    }
    // fuse-native hands paths to JS decoded as UTF-8, so a name that is not could never be looked up.
    if (manifest.features.includes('byte-names')) {
      throw new ExtfsError(ExitCode.Usage, 'this manifest has names that are not UTF-8 (feature "byte-names"), which only the native engine serves: unset EXTFS_ENGINE=fuse-native')
    }
    for (const inode of manifest.inodes) {
      const node: Node = { inode }
      if (inode.entries) node.children = new Map(inode.entries.map((e) => [e.name, e.ino]))
      if (inode.inline !== undefined) node.inline = Buffer.from(inode.inline, 'base64')
      this.nodes.set(inode.ino, node)
    }
    this.rootIno = manifest.root
    this.usage = imageUsage(manifest)
  }

  private node(ino: number): Node {
    const n = this.nodes.get(ino)
    if (!n) throw new ViewError(Errno.ENOENT, `no inode ${ino}`)
    return n
  }

  lookup(parentIno: number, name: string): number {
    const parent = this.node(parentIno)
    if (!parent.children) throw new ViewError(Errno.ENOTDIR, `inode ${parentIno} is not a directory`)
    const ino = parent.children.get(name)
    if (ino === undefined) throw new ViewError(Errno.ENOENT, `no entry ${name}`)
    return ino
  }

  /** Path-based engines (fuse-native) resolve "/a/b" component by component. */
  resolve(path: string): number {
    let ino = this.rootIno
    for (const part of path.split('/')) if (part) ino = this.lookup(ino, part)
    return ino
  }

  getattr(ino: number): Attr {
    const i = this.node(ino).inode
    return {
      ino: i.ino, mode: TYPE_BITS[i.kind] | i.perm, nlink: i.nlink, uid: i.uid, gid: i.gid, rdev: i.rdev ?? 0,
      size: i.size, blocks: i.blocks, blksize: this.manifest.blockSize, atime: i.atime, mtime: i.mtime, ctime: i.ctime,
    }
  }

  readdir(ino: number): { name: string; ino: number }[] {
    const i = this.node(ino).inode
    if (!i.entries) throw new ViewError(Errno.ENOTDIR, `inode ${ino} is not a directory`)
    return i.entries
  }

  /** Every open is validated against the config-ID record: a released or changed image is refused. */
  open(ino: number, path: string): void {
    this.node(ino)
    const verdict = this.config.check()
    if (!verdict.ok) {
      if (this.refusals.note('open', ino, verdict.reason, path)) this.log.warn({ op: 'open', path, ino, reason: verdict.reason }, 'open refused: frozen image not current')
      throw new ViewError(Errno.ESTALE, verdict.reason)
    }
  }

  /**
   * Read up to `length` bytes at `offset` of the file opened as `path` into `target`; returns the
   * count (short only at EOF). Holes and unwritten ranges are zero-filled here, never read from the device.
   */
  read(ino: number, target: Buffer, length: number, offset: number, path: string): number {
    const node = this.node(ino)
    const { inode } = node
    if (inode.kind !== 'file') throw new ViewError(Errno.EISDIR, `inode ${ino} is not a regular file`)
    this.refuseStaleRead(ino, path, offset)
    if (node.inline) return node.inline.copy(target, 0, Math.min(offset, inode.size), Math.min(offset + length, inode.size))
    let pos = 0
    for (const seg of planRead(inode.extents ?? [], inode.size, offset, length)) {
      if (seg.kind === 'zero') {
        target.fill(0, pos, pos + seg.length)
      } else if (seg.kind === 'decoded') {
        throw new ViewError(Errno.EIO, `inode ${ino}: compressed extent, which this engine cannot decode`) // refused at load: never here
      } else {
        const device = this.devices[seg.device]
        try {
          device.readExact(target, pos, seg.length, seg.deviceOffset)
        } catch (err) {
          this.refusals.note('read', ino, (err as Error).message, path)
          this.log.error({ op: 'read', path, ino, offset: offset + pos, device: device.id, deviceOffset: seg.deviceOffset, err: (err as Error).message }, 'read failed')
          throw new ViewError(Errno.EIO, (err as Error).message)
        }
      }
      pos += seg.length
    }
    return pos
  }

  /**
   * Reads are judged like opens: this view cannot follow a delta, so once the record changed or the
   * image was released, the blocks of a file opened before may hold other data by now.
   */
  private refuseStaleRead(ino: number, path: string, offset: number): void {
    const verdict = this.config.check()
    if (verdict.ok) return
    this.refusals.note('read-refused', ino, verdict.reason, path)
    this.log.warn({ op: 'read', path, ino, offset, reason: verdict.reason }, 'read refused: frozen image not current')
    throw new ViewError(Errno.ESTALE, verdict.reason)
  }

  /** Opens and reads refused and reads failed since the view was made. */
  refusedRequests(): RefusalSummary {
    return this.refusals.summary()
  }

  readlink(ino: number): string {
    const i = this.node(ino).inode
    if (i.target === undefined) throw new ViewError(Errno.EINVAL, `inode ${ino} is not a symlink`)
    return i.target
  }

  listxattr(ino: number): string[] {
    return Object.keys(this.node(ino).inode.xattrs ?? {})
  }

  getxattr(ino: number, name: string): Buffer {
    const value = this.node(ino).inode.xattrs?.[name]
    if (value === undefined) throw new ViewError(Errno.ENODATA, `no attribute ${name}`)
    return Buffer.from(value, 'base64')
  }

  statfs(): StatFs {
    return this.usage
  }
}

/** Sizes of the image as exported; nothing is free (the view is read-only). */
function imageUsage(manifest: Manifest): StatFs {
  const bsize = manifest.blockSize
  let blocks512 = 0 // st_blocks counts 512-byte units
  for (const i of manifest.inodes) blocks512 += i.blocks
  const files = manifest.inodes.length
  return { bsize, frsize: bsize, blocks: Math.ceil((blocks512 * 512) / bsize), bfree: 0, bavail: 0, files, ffree: 0, favail: 0, namemax: 255 }
}
