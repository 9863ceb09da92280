// The pure parts of the volume chain: a loop device's range through its backing file's extents, and
// the merging of resolved spans. The live stack is exercised on real loop devices in
// test/e2e/through-loop.test.ts.
import t from 'tap'
import { buildBackingExtents, mapLoopRange } from '../../src/mapping/loop'
import { mergeRawSpans } from '../../src/mapping/stack'
import type { DevNum, RawDisk, RawSpan, Span } from '../../src/mapping/span'
import { FIEMAP_EXTENT_ENCODED, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNWRITTEN, FIEMAP_EXTENT_DATA_INLINE, type FiemapExtent } from '../../src/linux'

const MiB = 1024 * 1024
const outer: DevNum = { major: 7, minor: 0 }
const fe = (logical: number, physical: number, length: number, flags = 0): FiemapExtent => ({ logical, physical, length, flags })
const span = (offset: number, length: number): Span => ({ dev: outer, offset, length })
const hole = (length: number): Span => ({ dev: null, offset: 0, length })

// A 4 MiB image: 0..1 MiB at 40 MiB, 1..2 MiB at 41 MiB (the same run, split by the filesystem),
// 2..3 MiB preallocated only, 3..3.5 MiB at 10 MiB, 3.5..4 MiB never written.
const IMAGE = [fe(MiB, 41 * MiB, MiB), fe(0, 40 * MiB, MiB), fe(2 * MiB, 90 * MiB, MiB, FIEMAP_EXTENT_UNWRITTEN), fe(3 * MiB, 10 * MiB, MiB / 2, FIEMAP_EXTENT_LAST)]
const whole = buildBackingExtents('/img', outer, 4 * MiB, { offset: 0, sizelimit: 0 }, IMAGE)

t.test('backing extents', async (t) => {
  t.same([whole.logical, whole.physical, whole.length], [[0, 3 * MiB], [40 * MiB, 10 * MiB], [2 * MiB, MiB / 2]], 'sorted, split run joined, unwritten dropped')
  t.equal(whole.deviceSize, 4 * MiB)
  const windowed = buildBackingExtents('/img', outer, 4 * MiB + 100, { offset: MiB, sizelimit: 2 * MiB }, IMAGE)
  t.equal(windowed.deviceSize, 2 * MiB, 'sizelimit caps the device')
  t.equal(buildBackingExtents('/img', outer, 4 * MiB + 700, { offset: 0, sizelimit: 0 }, IMAGE).deviceSize, 4 * MiB + 512, 'whole sectors only')
  t.throws(() => buildBackingExtents('/vm/disk.img', outer, 4 * MiB, { offset: 0, sizelimit: 0 }, [fe(0, 0, MiB, FIEMAP_EXTENT_ENCODED)]), /loop backing file \/vm\/disk.img: extent at 0 is inline, encoded/)
  t.throws(() => buildBackingExtents('/vm/disk.img', outer, 60, { offset: 0, sizelimit: 0 }, [fe(0, 12345, 60, FIEMAP_EXTENT_DATA_INLINE)]), /\/vm\/disk.img/)
})

t.test('loop ranges', async (t) => {
  const cases: Array<[string, number, number, Span[]]> = [
    ['inside the joined run', MiB - 4096, 8192, [span(41 * MiB - 4096, 8192)]],
    ['run, unwritten, run', 2 * MiB - 10, MiB + 20, [span(42 * MiB - 10, 10), hole(MiB), span(10 * MiB, 10)]],
    ['the unwritten part alone', 2 * MiB + 5, 100, [hole(100)]],
    ['into the unwritten tail', 3 * MiB + MiB / 2 - 1, 2, [span(10 * MiB + MiB / 2 - 1, 1), hole(1)]],
    ['zero length', 77, 0, []],
  ]
  for (const [name, offset, length, want] of cases) t.same(mapLoopRange(whole, offset, length), want, name)
  // The worked example of mapLoopRange's comment: the loop starts 1 MiB into the file.
  const windowed = buildBackingExtents('/img', outer, 4 * MiB, { offset: MiB, sizelimit: 0 }, IMAGE)
  t.same(mapLoopRange(windowed, 4096, 10), [span(41 * MiB + 4096, 10)], 'loop offset is added')
  t.throws(() => mapLoopRange(whole, 4 * MiB - 1, 2), /outside the loop device on \/img/)
  const empty = buildBackingExtents('/img', outer, MiB, { offset: 0, sizelimit: 0 }, [])
  t.same(mapLoopRange(empty, 0, MiB), [hole(MiB)], 'a sparse image with nothing written')
})

t.test('merging resolved spans', async (t) => {
  const disk = (name: string, minor: number): RawDisk => ({ name, path: `/dev/${name}`, major: 7, minor, size: 100 * MiB })
  const [a, a2, b] = [disk('loop0', 0), disk('loop0', 0), disk('loop1', 1)] // a2: an equal disk, another object
  const r = (raw: RawDisk | null, offset: number, length: number): RawSpan => ({ raw, offset, length })
  t.same(mergeRawSpans([r(a, 0, 10), r(a2, 10, 5), r(b, 15, 5), r(b, 30, 1), r(null, 0, 3), r(null, 0, 4), r(a, 31, 0), r(a, 31, 1)]),
    [r(a, 0, 15), r(b, 15, 5), r(b, 30, 1), r(null, 0, 7), r(a, 31, 1)])
  const input = [r(a, 0, 10), r(a, 10, 10)]
  mergeRawSpans(input)
  t.equal(input[0].length, 10, 'the input is left alone')
})
