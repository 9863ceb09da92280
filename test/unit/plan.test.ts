// Extent arithmetic: table cases, then random files checked against an in-memory model.
import t from 'tap'
import { firstExtentEndingAfter, planRead, type Segment } from '../../src/extents/plan'
import type { Extent } from '../../src/manifest/types'

const ext = (fileOffset: number, device: number, deviceOffset: number, length: number): Extent =>
  ({ fileOffset, device, deviceOffset, length })
const zero = (length: number): Segment => ({ kind: 'zero', length })
const data = (device: number, deviceOffset: number, length: number): Segment => ({ kind: 'data', device, deviceOffset, length })

// A 10000-byte file: 0..4096 on device 0 at 1000000, hole 4096..8192, 8192..12288 on device 1 at
// 50000 (past EOF from 10000: the tail of the last block). The worked example of planRead's comment.
const FILE = [ext(0, 0, 1_000_000, 4096), ext(8192, 1, 50_000, 4096)]
// A file with holes everywhere: 100..200, 300..301, 301..302 (touching 1-byte extents), hole to EOF 1000.
const HOLEY = [ext(100, 0, 0, 100), ext(300, 0, 500, 1), ext(301, 1, 7, 1)]

interface Case {
  name: string
  extents: Extent[]
  size: number
  offset: number
  length: number
  want: Segment[]
}

const cases: Case[] = [
  { name: 'the worked example', extents: FILE, size: 10000, offset: 4000, length: 8000, want: [data(0, 1_004_000, 96), zero(4096), data(1, 50_000, 1808)] },
  { name: 'whole file', extents: FILE, size: 10000, offset: 0, length: 10000, want: [data(0, 1_000_000, 4096), zero(4096), data(1, 50_000, 1808)] },
  { name: 'inside one extent', extents: FILE, size: 10000, offset: 10, length: 20, want: [data(0, 1_000_010, 20)] },
  { name: 'exactly one extent', extents: FILE, size: 10000, offset: 0, length: 4096, want: [data(0, 1_000_000, 4096)] },
  { name: 'inside the hole', extents: FILE, size: 10000, offset: 5000, length: 100, want: [zero(100)] },
  { name: 'exactly the hole', extents: FILE, size: 10000, offset: 4096, length: 4096, want: [zero(4096)] },
  { name: 'from the hole into an extent', extents: FILE, size: 10000, offset: 8000, length: 500, want: [zero(192), data(1, 50_000, 308)] },
  { name: 'last extent clipped at EOF', extents: FILE, size: 10000, offset: 9990, length: 4096, want: [data(1, 51_798, 10)] },
  { name: 'the last byte', extents: FILE, size: 10000, offset: 9999, length: 1, want: [data(1, 51_807, 1)] },
  { name: 'at EOF', extents: FILE, size: 10000, offset: 10000, length: 4096, want: [] },
  { name: 'past EOF', extents: FILE, size: 10000, offset: 12000, length: 100, want: [] },
  { name: 'far past EOF', extents: FILE, size: 10000, offset: 2 ** 52, length: 2 ** 20, want: [] },
  { name: 'length 0', extents: FILE, size: 10000, offset: 100, length: 0, want: [] },
  { name: 'hole at start', extents: HOLEY, size: 1000, offset: 0, length: 150, want: [zero(100), data(0, 0, 50)] },
  { name: 'hole in the middle', extents: HOLEY, size: 1000, offset: 150, length: 200, want: [data(0, 50, 50), zero(100), data(0, 500, 1), data(1, 7, 1), zero(48)] },
  { name: 'hole at end', extents: HOLEY, size: 1000, offset: 302, length: 5000, want: [zero(698)] },
  { name: '1-byte extents', extents: HOLEY, size: 1000, offset: 300, length: 2, want: [data(0, 500, 1), data(1, 7, 1)] },
  { name: 'second 1-byte extent alone', extents: HOLEY, size: 1000, offset: 301, length: 1, want: [data(1, 7, 1)] },
  { name: 'whole holey file', extents: HOLEY, size: 1000, offset: 0, length: 1000, want: [zero(100), data(0, 0, 100), zero(100), data(0, 500, 1), data(1, 7, 1), zero(698)] },
  { name: 'no extents at all', extents: [], size: 500, offset: 0, length: 1000, want: [zero(500)] },
  { name: 'empty file', extents: [], size: 0, offset: 0, length: 4096, want: [] },
  { name: 'request ends inside the hole before an extent', extents: HOLEY, size: 1000, offset: 0, length: 50, want: [zero(50)] },
  { name: 'request ends where an extent starts', extents: HOLEY, size: 1000, offset: 0, length: 100, want: [zero(100)] },
  { name: 'size inside a hole (extent past EOF dropped)', extents: [ext(0, 0, 0, 10), ext(100, 0, 100, 10)], size: 50, offset: 0, length: 200, want: [data(0, 0, 10), zero(40)] },
]

t.test('table', async (t) => {
  for (const c of cases) {
    t.test(c.name, async (t) => {
      const got = planRead(c.extents, c.size, c.offset, c.length)
      t.same(got, c.want)
      t.equal(total(got), Math.min(c.length, Math.max(0, c.size - c.offset)), 'lengths add up')
    })
  }
})

t.test('bad arguments are loud', async (t) => {
  t.throws(() => planRead(FILE, 10000, -1, 10), RangeError)
  t.throws(() => planRead(FILE, 10000, 0.5, 10), RangeError)
  t.throws(() => planRead(FILE, 10000, 0, -1), RangeError)
  t.throws(() => planRead(FILE, 10000, 0, NaN), RangeError)
})

t.test('firstExtentEndingAfter', async (t) => {
  t.equal(firstExtentEndingAfter(FILE, 0), 0)
  t.equal(firstExtentEndingAfter(FILE, 4095), 0)
  t.equal(firstExtentEndingAfter(FILE, 4096), 1, 'an extent ending at the offset is behind it')
  t.equal(firstExtentEndingAfter(FILE, 12287), 1)
  t.equal(firstExtentEndingAfter(FILE, 12288), 2, 'past every extent')
  t.equal(firstExtentEndingAfter([], 0), 0)
})

function total(segments: Segment[]): number {
  return segments.reduce((sum, s) => sum + s.length, 0)
}

/** mulberry32: a small seeded PRNG, so a failure can be replayed from its seed. */
function prng(seed: number): (n: number) => number {
  let a = seed >>> 0
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return (((x ^ (x >>> 14)) >>> 0) / 4294967296) * n | 0
  }
}

interface Model {
  devices: Buffer[]
  extents: Extent[]
  size: number
  /** The bytes a reader must see: extent data, zeros in holes, nothing past `size`. */
  content: Buffer
}

/** A random file: random devices, sorted extents with random gaps (or none), a random size. */
function randomModel(rand: (n: number) => number): Model {
  const devices = Array.from({ length: 1 + rand(3) }, () => {
    const b = Buffer.alloc(256 + rand(4096))
    for (let i = 0; i < b.length; i++) b[i] = rand(256)
    return b
  })
  const extents: Extent[] = []
  let pos = rand(3) === 0 ? 0 : rand(64)
  const count = rand(8)
  for (let i = 0; i < count; i++) {
    const device = rand(devices.length)
    const length = Math.min(1 + rand(rand(2) === 0 ? 4 : 300), devices[device]!.length)
    const deviceOffset = rand(devices[device]!.length - length + 1)
    extents.push({ fileOffset: pos, device, deviceOffset, length })
    pos += length + (rand(2) === 0 ? 0 : rand(200))
  }
  // EOF anywhere from inside the last extent (its tail past EOF) to well past it (a trailing hole);
  // the validator guarantees only that every extent starts before EOF.
  const last = extents[extents.length - 1]
  const minSize = last === undefined ? 0 : last.fileOffset + 1
  const size = minSize + rand(last === undefined ? 500 : last.length + 200)
  const content = Buffer.alloc(Math.max(size, pos + 1000))
  for (const e of extents) devices[e.device]!.copy(content, e.fileOffset, e.deviceOffset, e.deviceOffset + e.length)
  return { devices, extents, size, content: content.subarray(0, size) }
}

/** Run a plan against the model's devices, as the view does against raw devices. */
function execute(model: Model, segments: Segment[]): Buffer {
  return Buffer.concat(segments.map((s) => {
    if (s.kind === 'zero') return Buffer.alloc(s.length)
    const device = model.devices[s.device]!
    if (s.deviceOffset < 0 || s.deviceOffset + s.length > device.length) throw new Error('plan reads outside the device')
    return device.subarray(s.deviceOffset, s.deviceOffset + s.length)
  }))
}

t.test('random files against an in-memory model', async (t) => {
  const seed = 20240501
  const rand = prng(seed)
  let reads = 0
  let failures = 0
  for (let file = 0; file < 500 && failures === 0; file++) {
    const model = randomModel(rand)
    for (let r = 0; r < 10 && failures === 0; r++) {
      const offset = rand(model.size + 100)
      const length = rand(4) === 0 ? rand(3) : rand(model.size + 100)
      const plan = planRead(model.extents, model.size, offset, length)
      const got = execute(model, plan)
      const want = model.content.subarray(Math.min(offset, model.size), Math.min(offset + length, model.size))
      reads++
      const ok = got.equals(want) && plan.every((s) => s.length > 0) && checkDataInsideExtents(model.extents, plan, offset)
      if (!ok) {
        failures++
        t.fail('plan differs from the model', { seed, file, offset, length, size: model.size, extents: model.extents, plan })
      }
    }
  }
  t.equal(failures, 0, `${reads} random reads matched the model (seed ${seed})`)
})

/** Each data segment lies inside the extent that covers its file offset (never reads bytes the file does not own). */
function checkDataInsideExtents(extents: Extent[], plan: Segment[], offset: number): boolean {
  let pos = offset
  for (const s of plan) {
    if (s.kind === 'data') {
      const e = extents.find((x) => x.fileOffset <= pos && pos < x.fileOffset + x.length)
      if (e === undefined || e.device !== s.device) return false
      if (s.deviceOffset !== e.deviceOffset + (pos - e.fileOffset)) return false
      if (pos + s.length > e.fileOffset + e.length) return false
    }
    pos += s.length
  }
  return true
}
