// The merge-join of a bulk remap (src/remap/join.ts): the current map (manifest ⊕ delta overlay)
// against a fresh mapping, by inode number. Pure: tables of inodes in, changed files and device facts out.
import t from 'tap'
import { ExportError } from '../../src/errors'
import type { FileLocation } from '../../src/delta/chain'
import type { Extent, Inode } from '../../src/manifest/types'
import { joinByIno, sameExtents } from '../../src/remap/join'
import { SampleSpread } from '../../src/device/fingerprint'
import { extent, makeInode } from '../helpers/manifest-factory'

const file = (ino: number, extents: Extent[], size = 8192): Inode => makeInode(ino, 'file', { size, extents })
const dir = (ino: number): Inode => makeInode(ino, 'dir', { entries: [] })
/** Fresh disk 0 is device 0 of the map, fresh disk 1 is new. */
const known = (i: number) => (i === 0 ? 0 : -1)

function join(was: Inode[], now: Inode[], overlay = new Map<number, FileLocation>(), retired = new Set<number>()) {
  return joinByIno({ was, now, overlay, known, retired })
}

t.test('an unchanged image: nothing changed, every device still used', async (t) => {
  const was = [dir(2), file(12, [extent(0, 0, 4096, 8192)]), file(13, [extent(0, 0, 65536, 4096)], 4096)]
  const now = structuredClone(was)
  const r = join(was, now)
  t.same(r.changed, [])
  t.equal(r.files, 2)
  t.same([...r.usedDisks], [0])
  t.same([...r.touched], [])
  t.equal(r.after.get(0)!.extents().length, 2)
})

t.test('a moved extent, a new device, a mirror moving alone: each a change with its complete new list', async (t) => {
  const was = [file(12, [extent(0, 0, 4096, 8192)]), file(13, [extent(0, 0, 65536, 8192)]), file(14, [{ ...extent(0, 0, 1 << 20, 8192), copies: [{ device: 0, deviceOffset: 2 << 20 }], csums: 'AAAAAAAAAAA=' }])]
  const now = [file(12, [extent(0, 0, 8192, 8192)]), file(13, [extent(0, 1, 65536, 8192)]), file(14, [{ ...extent(0, 0, 1 << 20, 8192), copies: [{ device: 0, deviceOffset: 3 << 20 }], csums: 'AAAAAAAAAAA=' }])]
  const r = join(was, now)
  t.same(r.changed.map((f) => f.ino), [12, 13, 14])
  t.same(r.changed[1]!.extents, [extent(0, 1, 65536, 8192)], 'extents on fresh disk indexes, translated when published')
  t.same([...r.usedDisks].sort(), [0, 1])
  t.same([...r.touched], [0])
  t.equal(r.before.get(13)!.size, 8192)
  t.same(r.before.get(13)!.extents, [extent(0, 0, 65536, 8192)])
})

t.test('the delta overlay stands for the manifest: compared against it, not against the manifest', async (t) => {
  const was = [file(12, [extent(0, 0, 4096, 8192)]), file(13, [extent(0, 0, 65536, 8192)])]
  // Delta 1 moved 12 to 1 MiB; the fresh mapping still has it there: unchanged. 13 moved since the manifest, not since its delta.
  const overlay = new Map<number, FileLocation>([[12, { size: 8192, extents: [extent(0, 0, 1 << 20, 8192)] }]])
  const now = [file(12, [extent(0, 0, 1 << 20, 8192)]), file(13, [extent(0, 0, 65536, 8192)])]
  t.same(join(was, now, overlay).changed, [])
  // Without the overlay, 12 would be a change.
  t.same(join(was, now).changed.map((f) => f.ino), [12])
})

t.test('carried content: nothing of it moves; raw blocks carried now go into the delta inline', async (t) => {
  const was = [makeInode(12, 'file', { size: 3, inline: 'YWJj' }), file(13, [extent(0, 0, 65536, 4096)], 4096)]
  const now = [file(12, [extent(0, 0, 4096, 4096)], 3), makeInode(13, 'file', { size: 4096, inline: Buffer.alloc(4096).toString('base64') })]
  const r = join(was, now)
  t.same(r.changed.map((f) => [f.ino, f.inline !== undefined]), [[13, true]])
  t.same([...r.touched], [0])
})

t.test('the image tree must be the same on both sides: a missing or extra inode fails, never skipped', async (t) => {
  const a = file(12, [extent(0, 0, 4096, 8192)])
  const b = file(13, [extent(0, 0, 65536, 8192)])
  t.throws(() => join([a, b], [a]), { message: /inode 13 of the manifest is not in the image mapped now/ })
  t.throws(() => join([a], [a, b]), { message: /inode 13 is in the image mapped now, not in its manifest/ })
  t.throws(() => join([a, b], [b, structuredClone(b)]), { message: /inode 12 is not in the image mapped now/ })
  t.throws(() => join([b], [a]), { message: /inode 12 is not in its manifest/ })
  t.throws(() => join([a], [makeInode(12, 'symlink', { target: 'x' })]), { message: /is a file in the manifest, a symlink now/ })
  t.throws(() => join([a], [file(12, a.extents!, 9000)]), { message: /8192 bytes in the manifest, 9000 now/ })
  try {
    join([a], [])
    t.fail('joined')
  } catch (err) {
    t.ok(err instanceof ExportError, 'an ExportError: the remap fails with its exit code')
  }
})

t.test('a file of the current map on a retired device: the chain is inconsistent', async (t) => {
  const a = file(12, [extent(0, 0, 4096, 8192)])
  t.throws(() => join([a], [a], new Map(), new Set([0])), { message: /device 0, which the delta chain retired/ })
})

t.test('sameExtents: disks the map does not know never match', async (t) => {
  const e = [extent(0, 0, 4096, 8192)]
  t.ok(sameExtents(e, e, (i) => i))
  t.notOk(sameExtents(e, e, () => -1))
  t.notOk(sameExtents(e, [extent(0, 0, 4096, 4096)], (i) => i))
  t.notOk(sameExtents(e, [{ ...e[0]!, compression: 'zstd', diskLength: 4096, decodedLength: 8192, decodedOffset: 0 }], (i) => i))
})

t.test('SampleSpread keeps an even, bounded spread of what streams past', async (t) => {
  const s = new SampleSpread()
  for (let i = 0; i < 100_000; i++) s.add(extent(0, 0, i * 4096, 4096))
  const kept = s.extents()
  t.ok(kept.length <= 32 && kept.length >= 16, `${kept.length} kept`)
  t.equal(kept[0]!.deviceOffset, 0)
  t.ok(kept[kept.length - 1]!.deviceOffset > 50_000 * 4096, 'reaches the second half')
  const small = new SampleSpread()
  for (let i = 0; i < 5; i++) small.add(extent(0, 0, i * 4096, 4096))
  t.equal(small.extents().length, 5, 'few extents: all kept')
})
