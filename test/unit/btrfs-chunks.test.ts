// btrfs logical → member device arithmetic: table cases per profile, then random ranges checked
// against a model that lays chunks out forward (row by row) instead of inverting addresses.
import t from 'tap'
import { BG_DUP, BG_RAID0, BG_RAID1, BG_RAID10, BG_RAID1C3, BG_RAID5, ChunkMap, resolveLogical, type MemberSpan } from '../../src/mapping/btrfs-chunks'
import { ExportError } from '../../src/errors'
import type { BtrfsChunk } from '../../src/linux'

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB
const DATA = 1 // BTRFS_BLOCK_GROUP_DATA: carried along, ignored by the arithmetic
const L = 64 * KiB

function chunk(logical: number, length: number, profile: number, stripes: Array<[devid: number, offset: number]>, subStripes = 1, stripeLen = L): BtrfsChunk {
  return {
    logical, length, type: DATA | profile, stripeLen, numStripes: stripes.length, subStripes,
    stripes: stripes.map(([devid, offset]) => ({ devid, offset, devUuid: `uuid-${devid}` })),
  }
}
const span = (devid: number, offset: number, length: number): MemberSpan => ({ devid, offset, length })

// A filesystem of several chunks with a gap at 3 GiB .. 4 GiB (no chunk there).
const SINGLE = chunk(1 * GiB, 256 * MiB, 0, [[1, 20 * MiB]])
const DUP = chunk(1 * GiB + 256 * MiB, 256 * MiB, BG_DUP, [[1, 300 * MiB], [1, 600 * MiB]])
const RAID1 = chunk(2 * GiB, 256 * MiB, BG_RAID1, [[2, 1 * MiB], [1, 900 * MiB]])
// The worked example in btrfs-chunks.ts: devid 1 at 1 MiB, devid 2 at 9 MiB.
const RAID0 = chunk(2 * GiB + 256 * MiB, 256 * MiB, BG_RAID0, [[1, 1 * MiB], [2, 9 * MiB]])
// Two stripe sets of two mirrors each: set 0 = devids 1,2; set 1 = devids 3,4.
const RAID10 = chunk(2 * GiB + 512 * MiB, 512 * MiB, BG_RAID10, [[1, 10 * MiB], [2, 20 * MiB], [3, 30 * MiB], [4, 40 * MiB]], 2)
const RAID1C3 = chunk(4 * GiB, 64 * MiB, BG_RAID1C3, [[3, 5 * MiB], [1, 6 * MiB], [2, 7 * MiB]])
const MAP = new ChunkMap([RAID10, SINGLE, RAID1C3, RAID0, DUP, RAID1]) // unsorted on purpose

interface Case {
  name: string
  logical: number
  length: number
  want: MemberSpan[]
}

const cases: Case[] = [
  { name: 'single: start of chunk', logical: 1 * GiB, length: 4096, want: [span(1, 20 * MiB, 4096)] },
  { name: 'single: large range is one span', logical: 1 * GiB + 1000, length: 100 * MiB, want: [span(1, 20 * MiB + 1000, 100 * MiB)] },
  { name: 'single: last byte', logical: 1 * GiB + 256 * MiB - 1, length: 1, want: [span(1, 276 * MiB - 1, 1)] },
  { name: 'DUP: first copy', logical: 1 * GiB + 256 * MiB + 8192, length: 3 * MiB, want: [span(1, 300 * MiB + 8192, 3 * MiB)] },
  { name: 'RAID1: first stripe, even if its devid is not the lowest', logical: 2 * GiB + 5 * MiB, length: 7 * MiB, want: [span(2, 6 * MiB, 7 * MiB)] },
  { name: 'RAID1C3: first stripe', logical: 4 * GiB + 4096, length: 4096, want: [span(3, 5 * MiB + 4096, 4096)] },
  { name: 'RAID0: the worked example', logical: RAID0.logical + 200 * KiB, length: 4096, want: [span(2, 9 * MiB + 64 * KiB + 8 * KiB, 4096)] },
  { name: 'RAID0: inside unit 0', logical: RAID0.logical, length: L, want: [span(1, 1 * MiB, L)] },
  {
    name: 'RAID0: across units alternates devices and rows',
    logical: RAID0.logical + 60 * KiB, length: 4 * L,
    want: [span(1, 1 * MiB + 60 * KiB, 4 * KiB), span(2, 9 * MiB, L), span(1, 1 * MiB + L, L), span(2, 9 * MiB + L, L), span(1, 1 * MiB + 2 * L, 60 * KiB)],
  },
  {
    name: 'RAID10: unit 0 on set 0, unit 1 on set 1, unit 2 on set 0 row 1 (first mirror each)',
    logical: RAID10.logical, length: 3 * L,
    want: [span(1, 10 * MiB, L), span(3, 30 * MiB, L), span(1, 10 * MiB + L, L)],
  },
  { name: 'RAID10: mid-unit', logical: RAID10.logical + 5 * L + 100, length: 200, want: [span(3, 30 * MiB + 2 * L + 100, 200)] },
  {
    name: 'chunk boundary single → DUP',
    logical: 1 * GiB + 256 * MiB - 4096, length: 8192,
    want: [span(1, 276 * MiB - 4096, 4096), span(1, 300 * MiB, 4096)],
  },
  {
    name: 'chunk boundary RAID1 → RAID0',
    logical: 2 * GiB + 256 * MiB - 4096, length: 8192,
    want: [span(2, 257 * MiB - 4096, 4096), span(1, 1 * MiB, 4096)],
  },
  { name: 'length 0', logical: 1 * GiB, length: 0, want: [] },
]

t.test('table', async (t) => {
  for (const c of cases) t.same(resolveLogical(MAP, c.logical, c.length), c.want, c.name)
})

t.test('out of range throws ExportError naming the address', async (t) => {
  let caught: unknown
  try {
    resolveLogical(MAP, 0, 4096)
  } catch (e) {
    caught = e
  }
  t.ok(caught instanceof ExportError, 'an ExportError (exit code of a failed export)')
  t.throws(() => resolveLogical(MAP, 1 * GiB - 1, 2), /btrfs logical address 1073741823 is in no chunk/)
  // Runs off the last chunk into the gap at 3 GiB: the first missing byte is named.
  t.throws(() => resolveLogical(MAP, 3 * GiB - 4096, 8192), /btrfs logical address 3221225472 is in no chunk/)
  t.throws(() => resolveLogical(MAP, 4 * GiB + 64 * MiB, 1), /in no chunk/)
  t.throws(() => resolveLogical(new ChunkMap([]), 1 * GiB, 1), /in no chunk/)
})

t.test('refuses chunks it cannot map', async (t) => {
  t.throws(() => new ChunkMap([chunk(0, GiB, BG_RAID5, [[1, 0], [2, 0], [3, 0]])]), /RAID5\/6/)
  t.throws(() => new ChunkMap([chunk(0, GiB, BG_RAID0 | BG_RAID1, [[1, 0], [2, 0]])]), /several profile bits/)
  t.throws(() => new ChunkMap([chunk(0, GiB, BG_RAID10, [[1, 0], [2, 0], [3, 0]], 2)]), /sets of 2/)
  t.throws(() => new ChunkMap([chunk(0, GiB, 0, [[1, 0]]), chunk(GiB - 1, GiB, 0, [[1, 2 * GiB]])]), /overlap/)
  t.throws(() => new ChunkMap([{ ...SINGLE, numStripes: 2 }]), /malformed/)
})

// --- randomized: tiny stripe units so a byte-level model stays cheap ------------------------------

/** Byte `i` of the chunk → [devid, offset] on the first copy, by laying the chunk out forward. */
function layout(c: BtrfsChunk): Array<[number, number]> {
  const out: Array<[number, number]> = []
  const profile = c.type & (BG_RAID0 | BG_RAID10)
  if (!profile) {
    for (let i = 0; i < c.length; i++) out.push([c.stripes[0].devid, c.stripes[0].offset + i])
    return out
  }
  const width = profile === BG_RAID10 ? c.subStripes : 1
  // Fill row by row: in each row, every stripe set gets one unit, in stripe order.
  for (let row = 0; out.length < c.length; row++) {
    for (let s = 0; s < c.numStripes && out.length < c.length; s += width) {
      for (let b = 0; b < c.stripeLen && out.length < c.length; b++) out.push([c.stripes[s].devid, c.stripes[s].offset + row * c.stripeLen + b])
    }
  }
  return out
}

t.test('random ranges match a forward layout model', async (t) => {
  let seed = 12345
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31 // deterministic LCG: failures reproduce
    return seed % n
  }
  const SL = 16
  const chunks = [
    chunk(1000, 16 * 12, BG_RAID0, [[1, 0], [2, 100], [3, 200]], 1, SL),
    chunk(1000 + 192, 16 * 10, BG_RAID10, [[1, 500], [2, 600], [3, 700], [4, 800], [5, 900], [6, 1000]], 2, SL),
    chunk(1000 + 352, 100, BG_RAID1, [[2, 2000], [1, 3000]], 1, SL),
    chunk(1000 + 452, 77, 0, [[4, 4000]], 1, SL),
    chunk(1000 + 529, 16 * 7 + 5, BG_RAID0, [[1, 5000], [1, 6000]], 1, SL), // two stripes on one device; partial last unit
  ]
  const map = new ChunkMap(chunks)
  const model = new Map<number, [number, number]>()
  for (const c of chunks) layout(c).forEach((loc, i) => model.set(c.logical + i, loc))
  const first = chunks[0].logical
  const total = model.size
  for (let iter = 0; iter < 2000; iter++) {
    const start = first + rand(total)
    const length = 1 + rand(first + total - start)
    const got = resolveLogical(map, start, length)
    const bytes: Array<[number, number]> = []
    for (const s of got) {
      if (s.length <= 0) return t.fail(`empty span for ${start}+${length}`)
      for (let i = 0; i < s.length; i++) bytes.push([s.devid, s.offset + i])
    }
    const want = Array.from({ length }, (_, i) => model.get(start + i)!)
    if (JSON.stringify(bytes) !== JSON.stringify(want)) return t.fail(`range ${start}+${length}: got ${JSON.stringify(got)}`)
    // Merged: no two neighbours are contiguous on one device.
    for (let i = 1; i < got.length; i++) {
      if (got[i].devid === got[i - 1].devid && got[i - 1].offset + got[i - 1].length === got[i].offset) return t.fail(`unmerged spans at ${start}+${length}`)
    }
  }
  t.pass('2000 random ranges')
})

t.test('lookups stay fast with many chunks', async (t) => {
  // 100,000 chunks of 1 GiB each, then 1,000,000 lookups: binary search keeps this well under a second.
  const many = Array.from({ length: 100_000 }, (_, i) => chunk(i * GiB, GiB, 0, [[1, i * GiB]]))
  const map = new ChunkMap(many)
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < 1_000_000; i++) resolveLogical(map, ((i * 7919) % 100_000) * GiB + 4096, 4096)
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  t.ok(ms < 5000, `1,000,000 lookups took ${ms.toFixed(0)} ms`)
})
