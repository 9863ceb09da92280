// The tree a table image serves, engine-independent: path → inode fields, extents, data, xattrs. Two
// images pack the same manifest when their served trees are equal (the streaming and the whole-file
// packers lay out blobs in different orders, so their bytes differ).
import { TableReader } from '../../src/native-engine/tables'

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
