// The decoders of btrfs's compressed extents (native/view/decode.c), called through the addon's
// `decode` with no mount: valid streams of each algorithm decode exactly, and truncated, corrupted,
// oversized and random streams are refused with one message (never a crash, never bytes past the
// buffer: scripts/sanitize runs this under AddressSanitizer).
// zlib streams come from Node's zlib, zstd frames from the zstd CLI; lzo1x data is written here as
// literal runs (the lzo1x format's simplest valid form) inside btrfs's own segment framing, so the
// framing rules (segment headers never straddle a sector, padding skipped) are what is tested; real
// lzo data from the kernel is decoded in test/e2e/btrfs-compressed.test.ts.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { deflateSync } from 'node:zlib'
import { viewAddon } from '../../src/native-engine/addon'
import { COMPRESSION_ALG } from '../../src/native-engine/tables'

const addon = viewAddon()
const KiB = 1024
const SECTOR = 4096
const { zlib: ZLIB, lzo: LZO, zstd: ZSTD } = COMPRESSION_ALG

/** Compressible, every line different. */
function text(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length)
  for (let i = 0; i < length; i += 32) out.write(`${seed}:${i} some text\n`.padEnd(32, '-'), i)
  return out
}

/** Zero padding up to whole sectors, as btrfs stores a compressed extent. */
function padded(b: Buffer): Buffer {
  return Buffer.concat([b, Buffer.alloc((SECTOR - (b.length % SECTOR)) % SECTOR)])
}

function zstd(data: Buffer): Buffer {
  const r = spawnSync('zstd', ['-q', '-c', '-'], { input: data })
  if (r.status !== 0) throw new Error(`zstd: ${r.stderr}`)
  return r.stdout
}

/** lzo1x data that is one literal run of `bytes` (4 to any length), then the end marker. */
function lzoLiterals(bytes: Buffer): Buffer {
  const n = bytes.length
  if (n < 4) throw new RangeError('lzoLiterals: at least 4 bytes')
  let head: number[]
  if (n <= 238) head = [n + 17] // a first byte over 17: a literal run of byte - 17
  else {
    // 0, then 255 for each zero byte, then the rest: n - 18 = 255 * zeros + last, last in 1..255
    const zeros = Math.floor((n - 19) / 255)
    head = [0, ...Array(zeros).fill(0), n - 18 - 255 * zeros]
  }
  return Buffer.concat([Buffer.from(head), bytes, Buffer.from([0x11, 0, 0])])
}

/**
 * btrfs's lzo framing of `segments` (each lzo1x data): a 4-byte total length, then each segment's
 * 4-byte length and data; when fewer than 4 bytes are left in a sector after a segment, zero padding.
 * `pad: false` leaves the padding out (a header then straddles a sector: invalid).
 */
function lzoFrame(segments: Buffer[], pad = true): Buffer {
  const parts: Buffer[] = [Buffer.alloc(4)]
  let pos = 4
  for (const seg of segments) {
    const left = SECTOR - (pos % SECTOR)
    if (pad && left < 4) {
      parts.push(Buffer.alloc(left))
      pos += left
    }
    const len = Buffer.alloc(4)
    len.writeUInt32LE(seg.length)
    parts.push(len, seg)
    pos += 4 + seg.length
  }
  const out = Buffer.concat(parts)
  out.writeUInt32LE(out.length, 0)
  return padded(out)
}

const decode = (alg: number, stream: Buffer, decodedLength: number) => addon.decode(alg, stream, decodedLength, SECTOR)

t.test('valid streams decode exactly', async (t) => {
  const data = text(128 * KiB, 1)
  t.ok(decode(ZLIB, padded(deflateSync(data)), 128 * KiB).equals(data), 'zlib: 128 KiB')
  t.ok(decode(ZLIB, padded(deflateSync(data, { level: 1 })), 128 * KiB).equals(data), 'zlib: another level')
  const tail = text(5000, 2)
  t.ok(decode(ZLIB, padded(deflateSync(tail)), 8192).equals(tail), 'zlib: a file tail decodes to fewer bytes than the extent holds (read.c then needs no more)')
  t.ok(decode(ZSTD, padded(zstd(data)), 128 * KiB).equals(data), 'zstd: 128 KiB')
  t.ok(decode(ZSTD, padded(zstd(tail)), 8192).equals(tail), 'zstd: a tail')

  // A first segment that leaves 2 bytes in sector 0: padding, and the next header starts sector 1.
  const a = text(4066, 3)
  const b = text(4096, 4)
  const c = text(1000, 5)
  const first = lzoLiterals(a)
  t.equal(4 + 4 + first.length, SECTOR - 2, 'the first segment ends 2 bytes before the sector does')
  const lzo = lzoFrame([first, lzoLiterals(b), lzoLiterals(c)])
  t.ok(decode(LZO, lzo, 128 * KiB).equals(Buffer.concat([a, b, c])), 'lzo: segments, with padding skipped at a sector end')
  const short = Buffer.from('tiny')
  t.ok(decode(LZO, lzoFrame([lzoLiterals(short)]), SECTOR).equals(short), 'lzo: one short segment')
})

t.test('broken streams are refused, never decoded to something', async (t) => {
  const data = text(64 * KiB, 6)
  const z = padded(deflateSync(data))
  const s = padded(zstd(data))
  const segs = [lzoLiterals(text(4066, 7)), lzoLiterals(text(4096, 8))]
  const l = lzoFrame(segs)
  const flipped = (b: Buffer, at: number) => {
    const c = Buffer.from(b)
    c[at] ^= 0xff
    return c
  }
  const withTotal = (b: Buffer, total: number) => {
    const c = Buffer.from(b)
    c.writeUInt32LE(total, 0)
    return c
  }
  const withSegment = (b: Buffer, len: number) => {
    const c = Buffer.from(b)
    c.writeUInt32LE(len, 4)
    return c
  }
  const cases: [string, number, Buffer, number, RegExp][] = [
    ['zlib truncated', ZLIB, deflateSync(data).subarray(0, 2000), 64 * KiB, /zlib stream ends early/],
    ['zlib corrupted', ZLIB, flipped(z, 100), 64 * KiB, /zlib stream does not decode|ends early/],
    ['zlib oversized', ZLIB, z, 64 * KiB - 1, /decodes to more than 65535 bytes|zlib stream decodes past its buffer/],
    ['zlib garbage', ZLIB, Buffer.alloc(SECTOR, 0xab), 64 * KiB, /zlib stream does not decode/],
    ['zlib empty', ZLIB, Buffer.alloc(0), 10, /zlib stream/],
    ['zstd truncated', ZSTD, zstd(data).subarray(0, 100), 64 * KiB, /zstd frame/],
    ['zstd corrupted', ZSTD, flipped(s, 20), 64 * KiB, /zstd frame/],
    ['zstd oversized', ZSTD, s, 64 * KiB - 1, /decodes to more than 65535 bytes|zstd frame decodes past its buffer/],
    ['zstd zeros', ZSTD, Buffer.alloc(SECTOR), 64 * KiB, /zstd frame not found/],
    ['lzo shorter than its header', LZO, Buffer.from([1, 0]), 10, /has no header/],
    ['lzo total past the extent', LZO, withTotal(l, l.length + 1), 128 * KiB, /lzo header says/],
    ['lzo total leaving a sector unused', LZO, withTotal(l, 100), 128 * KiB, /leave whole sectors unused/],
    ['lzo total below its header', LZO, withTotal(l, 3), 128 * KiB, /lzo header says 3 bytes/],
    ['lzo segment past the stream', LZO, withSegment(lzoFrame([lzoLiterals(Buffer.from('tiny'))]), 4000), 128 * KiB, /runs past the stream's end/],
    ['lzo segment over one sector can take', LZO, lzoFrame([lzoLiterals(text(4500, 9))]), 128 * KiB, /longer than one sector can take/],
    ['lzo header straddling a sector', LZO, lzoFrame(segs, false), 128 * KiB, /crosses a sector boundary|does not decode/],
    ['lzo corrupted segment', LZO, flipped(l, 8), 128 * KiB, /does not decode|decodes to more/],
    ['lzo oversized', LZO, l, 8161, /decodes to more than 8161/],
    ['lzo overrunning its buffer', LZO, l, 5000, /lzo stream decodes past its buffer of 5001 bytes/],
    ['an unknown algorithm', 4, z, 64 * KiB, /unknown compression algorithm 4/],
  ]
  for (const [what, alg, stream, decodedLength, message] of cases) {
    t.throws(() => decode(alg, stream, decodedLength), { message: new RegExp(`^decode: .*(?:${message.source})`) }, what)
  }
  t.throws(() => addon.decode(ZLIB, z, 0, SECTOR), /decode\(algorithm/, 'a decoded length of 0 is a usage error')
  t.throws(() => addon.decode(ZLIB, z, 128 * KiB + 1, SECTOR), /decode\(algorithm/, 'over 128 KiB decoded: a usage error')
  t.throws(() => addon.decode(ZLIB, Buffer.alloc(128 * KiB + 1), 10, SECTOR), /decode\(algorithm/, 'over 128 KiB of stream: a usage error')
})

t.test('random and mutated streams: refused or decoded within the buffer, never a crash', async (t) => {
  let x = Number(process.env.EXTFS_TEST_SEED ?? 20261207) >>> 0
  const rnd = (n: number) => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x % n
  }
  const data = text(32 * KiB, 10)
  const valid: [number, Buffer][] = [
    [ZLIB, padded(deflateSync(data))], [ZSTD, padded(zstd(data))], [LZO, lzoFrame([lzoLiterals(data.subarray(0, 4096)), lzoLiterals(data.subarray(4096, 8192))])],
  ]
  let refused = 0
  let decoded = 0
  for (let i = 0; i < 3000; i++) {
    const [alg, good] = valid[i % 3]!
    const stream = Buffer.from(rnd(4) === 0 ? Buffer.from(Array.from({ length: 1 + rnd(3 * SECTOR) }, () => rnd(256))) : good)
    for (let k = rnd(6); k >= 0; k--) stream[rnd(stream.length)] = rnd(256)
    const cut = rnd(3) === 0 ? stream.subarray(0, rnd(stream.length + 1)) : stream
    const decodedLength = 1 + rnd(64 * KiB)
    try {
      const out = decode(alg, cut, decodedLength)
      if (out.length > decodedLength) t.fail(`decoded ${out.length} bytes into ${decodedLength}`)
      decoded++
    } catch (err) {
      if (!/^decode: /.test((err as Error).message)) t.fail(`unexpected error: ${(err as Error).message}`)
      refused++
    }
  }
  t.equal(refused + decoded, 3000, `3000 mutated streams: ${refused} refused, ${decoded} decoded within their buffers`)
})
