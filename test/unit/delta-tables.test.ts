// The packer of deltas for the native engine (src/native-engine/delta-tables.ts ↔ native/view/tables.h "A
// delta"): layout agreement with the addon, what the packed bytes hold, and what JS refuses itself.
// What C refuses is tested without a mount in test/unit/native-read-plan.test.ts (checkDelta) and through a
// mounted view in test/e2e/engine-delta.test.ts.
import t from 'tap'
import { checkDeltaLayout, DELTA_MAGIC, DELTA_VERSION, packDelta, unpackDelta } from '../../src/native-engine/delta-tables'
import { checkLayout, LAYOUT, TableReader, type NativeLayout } from '../../src/native-engine/tables'
import { validateManifest } from '../../src/manifest/validate'
import { viewAddon } from '../../src/native-engine/addon'
import { extent, makeInode, makeManifest } from '../helpers/manifest-factory'
import { packedTables } from '../helpers/packed-tables'

const u32 = (b: Buffer, name: 'delta_header' | 'delta_file', field: string, at = 0) =>
  b.readUInt32LE(at + (LAYOUT[name].fields as Record<string, { offset: number }>)[field]!.offset)
const u64 = (b: Buffer, field: string) => Number(b.readBigUInt64LE((LAYOUT.delta_header.fields as Record<string, { offset: number }>)[field]!.offset))

t.test('layout agrees with the addon', async (t) => {
  t.equal(LAYOUT.delta_header.size, 80, 'header: 80 bytes')
  t.equal(LAYOUT.delta_file.size, 16, 'file record: 16 bytes')
  const native = viewAddon().layout()
  t.doesNotThrow(() => checkLayout(native), 'structs agree')
  t.doesNotThrow(() => checkDeltaLayout(native), 'version and magic agree')
  t.throws(() => checkDeltaLayout({ ...native, deltaVersion: DELTA_VERSION + 1 } as NativeLayout), /delta format/)
  const tampered = JSON.parse(JSON.stringify(native)) as NativeLayout & { delta_file: { fields: Record<string, { offset: number }> } }
  tampered.delta_file.fields.count!.offset += 4
  t.throws(() => checkLayout(tampered), /delta_file\.count/)
})

t.test('packing: header, sorted files, merged extents, devices', async (t) => {
  const buf = packDelta([
    { index: 7, extents: [extent(0, 1, 8192, 4096), extent(4096, 1, 12288, 4096), extent(16384, 0, 0, 100)] },
    { index: 3, extents: [] },
    { index: 5, extents: [extent(0, 2, 1 << 20, 2 ** 40)] },
  ], [1 << 30, 2 ** 41])
  t.equal(u32(buf, 'delta_header', 'magic'), DELTA_MAGIC)
  t.equal(u32(buf, 'delta_header', 'version'), DELTA_VERSION)
  t.equal(u64(buf, 'total_size'), buf.length, 'total size')
  t.equal(buf.length % 8, 0)
  for (const f of ['files_off', 'extents_off', 'devices_off']) t.equal(u64(buf, f) % 8, 0, `${f} 8-aligned`)
  t.equal(u32(buf, 'delta_header', 'n_files'), 3)
  t.equal(u32(buf, 'delta_header', 'n_extents'), 3, 'two extents continuing each other on file and device: merged')
  t.equal(u32(buf, 'delta_header', 'n_devices'), 2)
  const back = unpackDelta(buf)
  t.same(back.files.map((f) => f.index), [3, 5, 7], 'sorted by inode index')
  t.same(back.files[0]!.extents, [], 'a file may become all hole')
  t.same(back.files[1]!.extents, [extent(0, 2, 1 << 20, 2 ** 40)], 'u64 values past 2^32')
  t.same(back.files[2]!.extents, [extent(0, 1, 8192, 8192), extent(16384, 0, 0, 100)])
  t.same(back.deviceSizes, [1 << 30, 2 ** 41])
  const filesOff = u64(buf, 'files_off')
  t.same([0, 1, 2].map((k) => u32(buf, 'delta_file', 'first', filesOff + k * 16)), [0, 0, 1], 'extent ranges back to back')
  t.equal(buf.readInt32LE(u64(buf, 'devices_off')), -1, 'device fd left to applyDelta')

  const empty = packDelta([], [])
  t.equal(empty.length, 80, 'an empty delta is a header')
  t.same(unpackDelta(empty), { files: [], deviceSizes: [] })
})

t.test('packing copies and checksums: the copies and data sections, as the tables pack them', async (t) => {
  const csums = (n: number, fill: number) => Buffer.alloc(4 * n, fill).toString('base64')
  const a = { ...extent(0, 0, 1 << 20, 8192), copies: [{ device: 1, deviceOffset: 2 ** 40 }], csums: csums(2, 1) }
  const b = { ...extent(8192, 0, (1 << 20) + 8192, 4096), copies: [{ device: 1, deviceOffset: 4096 }, { device: 2, deviceOffset: 0 }], csums: csums(1, 2) }
  const plain = extent(12288, 1, 0, 100)
  const buf = packDelta([{ index: 4, extents: [a, b, plain] }, { index: 2, extents: [{ ...extent(0, 2, 0, 4096), csums: csums(1, 3) }] }], [1 << 30])
  t.equal(u64(buf, 'total_size'), buf.length)
  for (const f of ['copies_off', 'data_off']) t.equal(u64(buf, f) % 8, 0, `${f} 8-aligned`)
  t.equal(u32(buf, 'delta_header', 'n_extents'), 4, 'extents with checksums are not merged, even when they continue each other')
  t.equal(u32(buf, 'delta_header', 'n_copies'), 3, 'every copy once')
  t.equal(u64(buf, 'data_size'), 4 * 4, 'one crc32c per sector')
  const back = unpackDelta(buf)
  t.same(back.files[0]!.extents, [{ ...extent(0, 2, 0, 4096), csums: csums(1, 3) }], 'checksums without copies (a copy on a missing member left out)')
  t.same(back.files[1]!.extents, [a, b, plain], 'copies (u64 offsets) and checksums read back as given')
  t.same(back.deviceSizes, [1 << 30])
  t.throws(() => packDelta([{ index: 1, extents: [{ ...a, copies: [{ device: -1, deviceOffset: 0 }] }] }], []), /device -1/, 'a copy\'s device index')
  t.throws(() => packDelta([{ index: 1, extents: [{ ...a, copies: [{ device: 1, deviceOffset: -4096 }] }] }], []), /copy deviceOffset is -4096/)
})

t.test('refusals in JS', async (t) => {
  t.throws(() => packDelta([{ index: 1, extents: [] }, { index: 1, extents: [] }], []), /index 1 listed twice/)
  t.throws(() => packDelta([{ index: -1, extents: [] }], []), /inode index -1/)
  t.throws(() => packDelta([{ index: 1, extents: [extent(-4096, 0, 0, 4096)] }], []), /fileOffset is -4096/)
  t.throws(() => packDelta([{ index: 1, extents: [extent(0, 0, 0.5, 4096)] }], []), /deviceOffset is 0.5/)
  t.throws(() => packDelta([{ index: 1, extents: [extent(0, -1, 0, 4096)] }], []), /device -1/)
  t.throws(() => packDelta([], [2 ** 53]), /device size/)
})

t.test('paths.index: ino → the index the tables gave it', async (t) => {
  const m = makeManifest()
  m.inodes.push(makeInode(90, 'file', { size: 1, blocks: 8, extents: [extent(0, 0, 0, 4096)] }), makeInode(5, 'file'))
  m.inodes[0]!.entries!.push({ name: 'z90', ino: 90 }, { name: 'b5', ino: 5 })
  m.inodes[0]!.nlink = 3
  const packed = packedTables(validateManifest(m), [3])
  const r = new TableReader(packed.image)
  const paths = packed.paths
  for (const [p, ino] of [['/a', 2], ['/sub', 3], ['/ln', 4], ['/z90', 90], ['/b5', 5], ['/', 1]] as const) {
    t.equal(paths.index(ino), r.resolve(p), `${p} (ino ${ino})`)
  }
  t.equal(paths.index(6), -1, 'unknown ino')
  t.equal(paths.index(1000), -1)
})
