// The native engine's tables: packing a manifest and reading it back the way the C engine does
// (src/native-engine/tables.ts TableReader mirrors native/view/ops.c and read.c), and the layout agreement
// between JS and the addon.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import type { Manifest } from '../../src/manifest/types'
import { validateManifest } from '../../src/manifest/validate'
import { checkLayout, FLAG_INLINE, LAYOUT, mergeExtents, TableReader, type NativeLayout } from '../../src/native-engine/tables'
import { viewAddon } from '../../src/native-engine/addon'
import { extent, inodeOf, makeDevice, makeInode, makeManifest } from '../helpers/manifest-factory'
import { packedTables } from '../helpers/packed-tables'

const fixture = (name: string): Manifest =>
  validateManifest(JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'fixtures', name), 'utf8')))

const pack = (m: Manifest) => {
  const packed = packedTables(validateManifest(m), m.devices.map((_, i) => 100 + i))
  const r = new TableReader(packed.image)
  const h = r.header
  const counts = { inodes: h.n_inodes, dirents: h.n_dirents, extents: h.n_extents, xattrs: h.n_xattrs, names: h.names_size, data: h.data_size }
  return { ...packed, r, counts }
}

/** A manifest whose root holds the given names, each a small file with a fresh inode. */
function flatDir(names: string[]): Manifest {
  const m = makeManifest()
  m.inodes = [makeInode(1, 'dir', { nlink: 2, entries: names.map((name, i) => ({ name, ino: 10 + i })) }),
    ...names.map((_, i) => makeInode(10 + i, 'file'))]
  return m
}

t.test('layout', async (t) => {
  t.equal(LAYOUT.inode.size, 112, 'inode record: 112 bytes')
  t.equal(LAYOUT.dirent.size, 12, 'dirent: 12 bytes')
  t.equal(LAYOUT.extent.size, 40, 'extent: 40 bytes')
  t.equal(LAYOUT.copy.size, 16, 'copy: 16 bytes')
  t.equal(LAYOUT.xattr.size, 16, 'xattr record: 16 bytes')
  t.equal(LAYOUT.device.size, 16, 'device: 16 bytes')
  t.equal(LAYOUT.inode.fields.mode.offset, 100)

  const native = viewAddon().layout()
  t.doesNotThrow(() => checkLayout(native), 'the addon agrees with tables.ts')
  const tampered = JSON.parse(JSON.stringify(native)) as NativeLayout & { inode: { fields: Record<string, { offset: number }> } }
  tampered.inode.fields.uid!.offset += 4
  t.throws(() => checkLayout(tampered), /inode\.uid: 4@72 in C, 4@68 in JS/, 'a moved field is refused, naming it')
  t.throws(() => checkLayout({ ...native, version: 99 }), /version 99/, 'another version is refused')
})

t.test('the factory manifest', async (t) => {
  const m = makeManifest()
  const { r, paths, counts } = pack(m)
  t.same(counts, { inodes: 4, dirents: 4, extents: 2, xattrs: 0, names: 14, data: 2 }, "names: a, ln, sub, hard, each NUL-terminated")
  t.equal(r.header.n_devices, 1)
  t.equal(r.header.block_size, 4096)

  const root = r.inode(0)
  t.equal(root.ino, 1, 'index 0 is the root (FUSE_ROOT_ID = index + 1)')
  t.equal(root.mode, 0o40755)
  t.same(r.readdir(0).map((e) => e.name), ['a', 'ln', 'sub'], 'entries sorted by name bytes')

  const a = r.lookup(0, 'a')!
  const sub = r.lookup(0, 'sub')!
  const ln = r.lookup(0, 'ln')!
  t.equal(r.lookup(0, 'missing'), undefined, 'a missing name is not found')
  t.equal(r.lookup(sub, 'hard'), a, 'a hard link is the same index')
  t.equal(r.resolve('/sub/hard'), a)

  const file = r.inode(a)
  t.match(file, { ino: 2, mode: 0o100644, nlink: 2, size: 10000, blocks: 24, uid: 1000, gid: 1000, flags: 0, parent: 0 })
  t.match(file, { atime_sec: 1_700_000_000, atime_nsec: 123_456_789, mtime_nsec: 123_456_789, ctime_nsec: 123_456_789 })
  t.same(r.extents(a), inodeOf(m, 2).extents, 'extents as in the manifest (not contiguous: nothing merged)')
  t.equal(r.inode(sub).parent, 0)

  t.equal(r.data(ln).toString(), 'a', 'symlink target')
  t.equal(paths.path(a), '/a', 'path of the first name')
  t.equal(paths.path(sub), '/sub')
  t.equal(paths.path(0), '/')
  t.equal(paths.ino(a), 2)

  // The image's sizes as exported, nothing free; st_blocks counts 512-byte units.
  const blocks = Math.ceil((m.inodes.reduce((sum, i) => sum + i.blocks, 0) * 512) / m.blockSize)
  t.match(r.header, { sf_bsize: m.blockSize, sf_frsize: m.blockSize, sf_blocks: blocks, sf_files: 4, sf_bfree: 0, sf_namemax: 255 })
})

t.test('the every-kind fixture', async (t) => {
  const m = fixture('manifest-v1-every-kind.json')
  const { r, paths } = pack(m)
  t.equal(r.inode(0).ino, 2, 'root ino as in the manifest')
  t.same(r.inode(0).xattr_count, 1)
  t.same(Object.keys(r.xattrs(0)), ['system.posix_acl_default'])

  const data = r.lookup(0, 'data.bin')!
  t.equal(r.lookup(r.lookup(0, 'sub')!, 'hardlink.bin'), data, 'hard link across directories')
  t.equal(r.lookup(0, 'café 😀'), r.lookup(0, 'empty'), 'hard link with a non-ASCII name')
  t.same(r.xattrs(data), {
    'user.comment': Buffer.from('hello'),
    'security.selinux': Buffer.from('system_u:object_r:var_t:s0\0'),
  }, 'xattr values, binary-exact')
  t.equal(r.listxattr(data).toString('latin1'), 'user.comment\0security.selinux\0', 'listxattr: names back to back, manifest order')
  t.same(r.extents(data), inodeOf(m, 12).extents)

  const small = r.lookup(0, 'small.txt')!
  t.equal(r.inode(small).flags, FLAG_INLINE)
  t.equal(r.data(small).toString(), 'small inline\n\n', 'inline content')
  t.equal(r.data(r.lookup(0, 'link')!).toString(), 'sub/hardlink.bin')

  const tty = r.inode(r.lookup(0, 'tty0')!)
  t.match(tty, { mode: 0o20620, rdev: 1024, uid: 0, gid: 5 })
  t.equal(r.inode(r.lookup(0, 'sda')!).mode, 0o60660)
  t.equal(r.inode(r.lookup(0, 'fifo')!).mode, 0o10600)
  t.equal(r.inode(r.lookup(0, 'sock')!).mode, 0o140755)
  t.equal(r.inode(r.lookup(0, 'sub')!).mode, 0o41777, 'sticky bit kept')
  t.equal(paths.path(r.lookup(r.lookup(0, 'sub')!, 'hardlink.bin')!), '/data.bin')

  const devices = [0, 1].map((k) => r.struct('device', r.header.devices_off + k * LAYOUT.device.size))
  t.same(devices.map((d) => [d.fd, d.size]), [[100, 1073741824], [101, 536870912]], 'device fds and sizes')
})

t.test('names sort as bytes, also where UTF-16 order differs', async (t) => {
  const names = ['b', 'a', 'é', 'z', 'Z', 'ä', '😀', '\uffff', 'aa', 'a b', 'a', 'A'].filter((n, i, all) => all.indexOf(n) === i)
  const { r } = pack(flatDir(names))
  const listed = r.readdir(0).map((e) => e.name)
  const bytewise = [...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)))
  t.same(listed, bytewise)
  t.ok(listed.indexOf('\uffff') < listed.indexOf('😀'), 'U+FFFF (EF BF BF) before U+1F600 (F0 ...), unlike a JS string sort')
  t.same(listed.slice(0, 4), ['A', 'Z', 'a', 'a b'])
  for (const n of names) t.equal(r.inode(r.lookup(0, n)!).ino, 10 + names.indexOf(n), `lookup ${JSON.stringify(n)}`)
  t.equal(r.lookup(0, 'a\0'), undefined)
  t.equal(r.lookup(0, 'é'.normalize('NFD')), undefined, 'no Unicode normalisation: NFD é is another name')
})

t.test('a large directory: every name found by binary search', async (t) => {
  const names = Array.from({ length: 5000 }, (_, i) => `${((i * 7919) % 5000).toString(36)}-${'x'.repeat(i % 40)}ü${i}`)
  const { r } = pack(flatDir(names))
  const listed = r.readdir(0)
  let sorted = true
  for (let i = 1; i < listed.length; i++) if (Buffer.compare(Buffer.from(listed[i - 1]!.name), Buffer.from(listed[i]!.name)) >= 0) sorted = false
  t.ok(sorted, 'strictly increasing')
  let found = 0
  for (const [i, n] of names.entries()) if (r.inode(r.lookup(0, n)!).ino === 10 + i) found++
  t.equal(found, names.length)
})

t.test('extents: merged when contiguous on file and device', async (t) => {
  t.same(mergeExtents([extent(0, 0, 8192, 4096), extent(4096, 0, 12288, 4096), extent(8192, 0, 16384, 100)]), [extent(0, 0, 8192, 8292)])
  t.same(mergeExtents([extent(0, 0, 8192, 4096), extent(4096, 0, 0, 4096)]), [extent(0, 0, 8192, 4096), extent(4096, 0, 0, 4096)], 'device jump')
  t.same(mergeExtents([extent(0, 0, 8192, 4096), extent(4096, 1, 12288, 4096)]), [extent(0, 0, 8192, 4096), extent(4096, 1, 12288, 4096)], 'other device')
  t.same(mergeExtents([extent(0, 0, 0, 4096), extent(8192, 0, 8192, 4096)]), [extent(0, 0, 0, 4096), extent(8192, 0, 8192, 4096)], 'hole between')

  const m = makeManifest()
  m.devices.push(makeDevice('d1', 2 ** 50))
  inodeOf(m, 2).extents = [extent(0, 0, 0, 4096), extent(4096, 0, 4096, 4096), extent(8192, 1, 2 ** 50 - 4096, 4096)]
  const { r } = pack(m)
  t.same(r.extents(r.lookup(0, 'a')!), [extent(0, 0, 0, 8192), extent(8192, 1, 2 ** 50 - 4096, 4096)], 'u64 device offsets round-trip')
})

t.test('large and negative numbers round-trip', async (t) => {
  const m = makeManifest()
  const a = inodeOf(m, 2)
  a.size = Number.MAX_SAFE_INTEGER
  a.blocks = 2 ** 40 + 7
  a.atime = [-1, 999_999_999]
  a.mtime = [-(2 ** 40), 1]
  a.ctime = [2 ** 40, 0]
  a.uid = 0xffff_fffe
  const { r } = pack(m)
  t.match(r.inode(r.lookup(0, 'a')!), {
    size: Number.MAX_SAFE_INTEGER, blocks: 2 ** 40 + 7, atime_sec: -1, atime_nsec: 999_999_999,
    mtime_sec: -(2 ** 40), mtime_nsec: 1, ctime_sec: 2 ** 40, uid: 0xffff_fffe,
  })
})

t.test('xattrs: shared values and name lists are stored once', async (t) => {
  const m = makeManifest()
  const label = Buffer.from('system_u:object_r:shared_t:s0').toString('base64')
  for (const ino of [1, 2, 3]) inodeOf(m, ino).xattrs = { 'security.selinux': label, 'user.n': Buffer.from(`v${ino}`).toString('base64') }
  inodeOf(m, 4).xattrs = { 'user.empty': '' }
  const { r } = pack(m)
  const xs = [0, r.lookup(0, 'a')!, r.lookup(0, 'sub')!].map((i) => r.struct('xattr', r.header.xattrs_off + r.inode(i).xattr_first * LAYOUT.xattr.size))
  t.equal(new Set(xs.map((x) => x.value_off)).size, 1, 'one copy of the shared label')
  t.equal(new Set(xs.map((x) => x.name_off)).size, 1, 'one copy of the shared name list')
  t.same(r.xattrs(r.lookup(0, 'sub')!)['user.n'], Buffer.from('v3'))
  t.same(r.xattrs(r.lookup(0, 'ln')!), { 'user.empty': Buffer.alloc(0) }, 'an empty value')
  t.equal(r.listxattr(r.lookup(0, 'ln')!).toString(), 'user.empty\0')
  t.equal(r.listxattr(r.lookup(0, 'a')!).toString(), 'security.selinux\0user.n\0')
})

t.test('refusals', async (t) => {
  const m = makeManifest()
  t.throws(() => packedTables(m, []), /0 device fds for 1 devices/)
  const orphan = makeManifest()
  orphan.inodes.push(makeInode(99, 'file'))
  t.throws(() => packedTables(orphan, [3]), /inode 99: is not reachable from the root \(an orphan\)/)
})
