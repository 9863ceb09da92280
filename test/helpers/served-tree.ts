// The tree a table image serves, engine-independent: path → inode fields, extents, data, xattrs. Two
// images pack the same manifest when their served trees are equal (blobs may lie in other orders, so
// their bytes may differ); manifestTree is the model, the tree a manifest's tables must serve.
import { TableReader } from '../../src/native-engine/tables'
import { decodeName, encodeName } from '../../src/manifest/names'
import type { Extent, Manifest } from '../../src/manifest/types'

export function servedTree(image: Buffer): Record<string, unknown> {
  const r = new TableReader(image)
  const out: Record<string, unknown> = {}
  const walk = (index: number, p: string) => {
    const { parent: _p, first: _f, xattr_first: _x, ...fields } = r.inode(index)
    const type = fields.mode! & 0o170000
    const inline = type === 0o100000 && (fields.flags! & 1) !== 0
    out[p] = {
      fields, xattrs: r.xattrs(index), listxattr: r.listxattr(index).toString('hex'),
      extents: type === 0o100000 && !inline ? r.extents(index) : [],
      data: inline || type === 0o120000 ? r.data(index).toString('hex') : '',
    }
    if (type === 0o040000) for (const e of r.readdir(index)) walk(e.child, `${p}/${e.name}`)
  }
  walk(0, '')
  return out
}

/** st_mode's type bits (stat.h), by the manifest's kind. */
const TYPE_BITS: Record<string, number> = { file: 0o100000, dir: 0o040000, symlink: 0o120000, fifo: 0o010000, char: 0o020000, block: 0o060000, socket: 0o140000 }

/**
 * The tree the tables of `m` must serve, made from the manifest alone (the model of the packer), in the
 * shape of servedTree: path → inode fields, xattrs, listxattr, extents (neighbours that continue each
 * other on one device merged, unless they carry checksums), inline content or symlink target.
 */
export function manifestTree(m: Manifest): Record<string, unknown> {
  const byIno = new Map(m.inodes.map((n) => [n.ino, n]))
  const out: Record<string, unknown> = {}
  const walk = (n: Manifest['inodes'][number], p: string) => {
    const extents: Extent[] = []
    const list = n.extents ?? []
    list.forEach((e, i) => {
      const last = extents[extents.length - 1]
      if (last && list[i - 1]!.csums === undefined && e.csums === undefined && last.device === e.device &&
        last.fileOffset + last.length === e.fileOffset && last.deviceOffset + last.length === e.deviceOffset) last.length += e.length
      else {
        const x: Extent = { fileOffset: e.fileOffset, device: e.device, deviceOffset: e.deviceOffset, length: e.length }
        // A compressed extent (never merged: it has csums) is served with its encoding.
        extents.push(e.compression === undefined ? x : { ...x, compression: e.compression, diskLength: e.diskLength, decodedLength: e.decodedLength, decodedOffset: e.decodedOffset })
      }
    })
    const names = Object.keys(n.xattrs ?? {})
    // Names as the bytes they stand for (src/manifest/names.ts), as the packer writes them.
    const data = n.inline !== undefined ? Buffer.from(n.inline, 'base64') : encodeName(n.target ?? '')
    const entries = (n.entries ?? []).map((e) => ({ name: encodeName(e.name), ino: e.ino })).sort((a, b) => Buffer.compare(a.name, b.name))
    out[p] = {
      fields: {
        ino: n.ino, size: n.size, blocks: n.blocks, rdev: n.rdev ?? 0, atime_sec: n.atime[0], mtime_sec: n.mtime[0], ctime_sec: n.ctime[0],
        atime_nsec: n.atime[1], mtime_nsec: n.mtime[1], ctime_nsec: n.ctime[1], uid: n.uid, gid: n.gid, nlink: n.nlink,
        count: n.kind === 'dir' ? entries.length : n.kind === 'file' ? (n.inline !== undefined ? data.length : extents.length) : n.kind === 'symlink' ? data.length : 0,
        xattr_count: names.length, mode: TYPE_BITS[n.kind]! | n.perm, flags: n.inline !== undefined ? 1 : 0, attrs: n.attrs ?? 0,
      },
      xattrs: Object.fromEntries(names.map((x) => [x, Buffer.from(n.xattrs![x]!, 'base64')])),
      listxattr: Buffer.concat(names.flatMap((x) => [encodeName(x), Buffer.of(0)])).toString('hex'),
      extents: n.kind === 'file' && n.inline === undefined ? extents : [],
      data: n.inline !== undefined || n.kind === 'symlink' ? data.toString('hex') : '',
    }
    for (const e of entries) walk(byIno.get(e.ino)!, `${p}/${decodeName(e.name)}`)
  }
  walk(byIno.get(m.root)!, '')
  return out
}
