// btrfs extent items → written extents (src/mapping/btrfs-items.ts): plain items as FIEMAP reports them,
// compressed ones as stored, holes and preallocated ranges left out, what extfs cannot serve refused.
import t from 'tap'
import { writtenExtents } from '../../src/mapping/btrfs-items'
import type { BtrfsFileExtent } from '../../src/linux'

const KiB = 1024
const item = (fileOffset: number, rest: Partial<BtrfsFileExtent>): BtrfsFileExtent => ({
  fileOffset, type: 1, compression: 0, encryption: 0, otherEncoding: 0, ramBytes: 128 * KiB, diskBytenr: 1 << 30, diskNumBytes: 128 * KiB,
  offset: 0, numBytes: 128 * KiB, ...rest,
})

t.test('items become the file written extents', async (t) => {
  t.same(writtenExtents([
    item(0, { offset: 8 * KiB, numBytes: 64 * KiB }),
    item(64 * KiB, { diskBytenr: 0 }), // a hole
    item(128 * KiB, { type: 2 }), // preallocated: reads as zeros
    item(256 * KiB, { compression: 3, diskBytenr: 5 << 20, diskNumBytes: 12 * KiB, offset: 20 * KiB, numBytes: 64 * KiB }),
    item(320 * KiB, { compression: 2, diskBytenr: 6 << 20, diskNumBytes: 4 * KiB, ramBytes: 8 * KiB, numBytes: 8 * KiB }),
  ], 'f'), [
    { logical: 0, physical: (1 << 30) + 8 * KiB, length: 64 * KiB, flags: 0 },
    { fileOffset: 256 * KiB, compression: 'zstd', logical: 5 << 20, diskLength: 12 * KiB, decodedLength: 128 * KiB, decodedOffset: 20 * KiB, length: 64 * KiB },
    { fileOffset: 320 * KiB, compression: 'lzo', logical: 6 << 20, diskLength: 4 * KiB, decodedLength: 8 * KiB, decodedOffset: 0, length: 8 * KiB },
  ])
})

t.test('what cannot be served is refused, naming the file and offset', async (t) => {
  const cases: [string, Partial<BtrfsFileExtent>, RegExp][] = [
    ['encrypted', { encryption: 1 }, /^f: extent at 4096 is encrypted or otherwise encoded/],
    ['otherwise encoded', { otherEncoding: 1 }, /otherwise encoded/],
    ['inline among regular ones', { type: 0 }, /is inline among regular ones/],
    ['an unknown algorithm', { compression: 4 }, /compressed with btrfs algorithm 4, which extfs does not know/],
    ['a stream over 128 KiB', { compression: 1, diskNumBytes: 132 * KiB }, /out of btrfs's bounds/],
    ['decoded over 128 KiB', { compression: 1, ramBytes: 132 * KiB }, /out of btrfs's bounds/],
    ['used past its decoded bytes', { compression: 1, offset: 4 * KiB }, /out of btrfs's bounds/],
  ]
  for (const [what, rest, message] of cases) t.throws(() => writtenExtents([item(4096, rest)], 'f'), { message }, what)
})
