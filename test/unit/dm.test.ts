// Device-mapper resolution against recorded `dmsetup table` and `thin_dump` outputs (test/fixtures/dm/,
// see its README): table cases for linear, striped and thin, a randomized check of striping against a
// byte-by-byte model, and the errors a malformed table must give. The live test runs only where the
// kernel has device-mapper.
import t from 'tap'
import { existsSync, readFileSync } from 'node:fs'
import * as path from 'node:path'
import { mapDmRange, parseDmTable, readDmTable, DM_CONTROL, type DevLookup, type DmTarget, type StripedTarget, type ThinPoolTarget } from '../../src/mapping/dm'
import { mapThinRange, parseThinDump } from '../../src/mapping/dm-thin'
import type { DevNum, Span } from '../../src/mapping/span'

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB
const BLOCK = 64 * KiB // the recorded pool's data_block_size, 128 sectors

const fixture = (name: string) => readFileSync(path.join(__dirname, '..', 'fixtures', 'dm', name), 'utf8')
const dev = (major: number, minor: number): DevNum => ({ major, minor })
const span = (d: DevNum | null, offset: number, length: number): Span => ({ dev: d, offset, length })
const hole = (length: number): Span => span(null, 0, length)
const [sdb, sdc, sdd] = [dev(8, 16), dev(8, 32), dev(8, 48)]
const poolData = dev(253, 1)
const total = (spans: Span[]) => spans.reduce((n, s) => n + s.length, 0)

/** The recorded tables name no /dev paths except the hand-written one; resolve those like the host did. */
const recordedHost: DevLookup = (p) => {
  const known: Record<string, DevNum> = { '/dev/sdb': sdb, '/dev/sdc': sdc }
  if (!known[p]) throw new Error(`unknown device ${p}`)
  return known[p]
}
const table = (name: string) => parseDmTable(fixture(name), recordedHost)

t.test('parsing recorded tables', async (t) => {
  t.same(table('lvm-linear-two-pvs.table'), [
    { type: 'linear', startSector: 0, lengthSectors: 2097152, dev: sdb, offsetSector: 2048 },
    { type: 'linear', startSector: 2097152, lengthSectors: 1048576, dev: sdc, offsetSector: 2048 },
  ])
  t.same(table('lvm-striped-3.table'), [{
    type: 'striped', startSector: 0, lengthSectors: 3145728, chunkSectors: 128,
    stripes: [{ dev: sdb, offsetSector: 2048 }, { dev: sdc, offsetSector: 2048 }, { dev: sdd, offsetSector: 2048 }],
  }])
  t.same(table('handwritten-devpaths.table').map((x) => (x as { dev: DevNum }).dev), [sdb, sdc], '/dev paths go through the lookup')
  t.same(table('thin-volume.table'), [{ type: 'thin', startSector: 0, lengthSectors: 2097152, pool: dev(253, 2), devId: 1 }])
  t.same(table('thin-pool.table'), [{ type: 'thin-pool', startSector: 0, lengthSectors: 4194304, metadata: dev(253, 0), data: poolData, blockSectors: 128 }])
})

interface Case {
  name: string
  table: string
  offset: number
  length: number
  want: Span[]
}

const cases: Case[] = [
  { name: 'linear: inside the first segment', table: 'lvm-linear-two-pvs.table', offset: 4096, length: 8192, want: [span(sdb, MiB + 4096, 8192)] },
  { name: 'linear: the very start', table: 'lvm-linear-two-pvs.table', offset: 0, length: 1, want: [span(sdb, MiB, 1)] },
  { name: 'linear: across the segment boundary', table: 'lvm-linear-two-pvs.table', offset: GiB - 4096, length: 8192, want: [span(sdb, MiB + GiB - 4096, 4096), span(sdc, MiB, 4096)] },
  { name: 'linear: the last byte', table: 'lvm-linear-two-pvs.table', offset: 1.5 * GiB - 1, length: 1, want: [span(sdc, MiB + 512 * MiB - 1, 1)] },
  { name: 'linear: /dev path devices', table: 'handwritten-devpaths.table', offset: 100 * MiB - 10, length: 20, want: [span(sdb, MiB + 100 * MiB - 10, 10), span(sdc, 0, 10)] },
  { name: 'striped: first chunk', table: 'lvm-striped-3.table', offset: 0, length: 64 * KiB, want: [span(sdb, MiB, 64 * KiB)] },
  // The worked example of mapDmRange's comment, on three stripes: chunk 1 is stripe 1's chunk 0.
  { name: 'striped: inside chunk 1', table: 'lvm-striped-3.table', offset: 100 * KiB, length: 8192, want: [span(sdc, MiB + 36 * KiB, 8192)] },
  {
    name: 'striped: across four chunks, wrapping to stripe 0', table: 'lvm-striped-3.table', offset: 60000, length: 200000,
    want: [span(sdb, MiB + 60000, 5536), span(sdc, MiB, 65536), span(sdd, MiB, 65536), span(sdb, MiB + 65536, 63392)],
  },
  { name: 'striped: one byte either side of a chunk boundary', table: 'lvm-striped-3.table', offset: 3 * 64 * KiB * 5 + 2 * 64 * KiB - 1, length: 2, want: [span(sdc, MiB + 5 * 64 * KiB + 64 * KiB - 1, 1), span(sdd, MiB + 5 * 64 * KiB, 1)] },
  { name: 'striped: the last chunk', table: 'lvm-striped-3.table', offset: 1.5 * GiB - 64 * KiB, length: 64 * KiB, want: [span(sdd, MiB + 512 * MiB - 64 * KiB, 64 * KiB)] },
  {
    name: 'striped then linear: across the segment boundary', table: 'lvm-striped-then-linear.table', offset: 512 * MiB - 64 * KiB, length: 128 * KiB,
    want: [span(sdc, MiB + 4095 * 64 * KiB, 64 * KiB), span(sdd, 526336 * 512, 64 * KiB)],
  },
  { name: 'zero length', table: 'lvm-striped-3.table', offset: 12345, length: 0, want: [] },
]

t.test('linear and striped ranges', async (t) => {
  for (const c of cases) {
    const got = mapDmRange(table(c.table), c.offset, c.length)
    t.same(got, c.want, c.name)
    t.equal(total(got), c.length, `${c.name}: lengths add up`)
  }
})

/** Where byte p of a striped target lives, one byte at a time: the definition, not the code's loop. */
function stripedByte(target: StripedTarget, p: number): { dev: DevNum; offset: number } {
  const chunk = target.chunkSectors * 512
  const k = Math.floor(p / chunk)
  const s = target.stripes[k % target.stripes.length]
  return { dev: s.dev, offset: s.offsetSector * 512 + Math.floor(k / target.stripes.length) * chunk + (p % chunk) }
}

t.test('striped: random ranges against a per-byte model', async (t) => {
  // A small odd chunk (3 sectors) over 4 stripes makes every range cross many boundaries.
  const targets: DmTarget[] = parseDmTable('0 960 striped 4 3 8:16 100 8:32 0 8:48 7 8:64 1\n')
  const target = targets[0] as StripedTarget
  const size = 960 * 512
  let seed = 42
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n)
  for (let i = 0; i < 300; i++) {
    const offset = rand(size)
    const length = rand(Math.min(size - offset, 20 * 1536) + 1)
    const spans = mapDmRange(targets, offset, length)
    let p = offset
    let ok = total(spans) === length
    for (const s of spans) {
      // Check each span's first and last byte against the model, and that it stays in one chunk.
      const first = stripedByte(target, p)
      const last = stripedByte(target, p + s.length - 1)
      ok &&= s.dev !== null && s.dev.minor === first.dev.minor && s.offset === first.offset &&
        last.dev.minor === first.dev.minor && last.offset === s.offset + s.length - 1
      p += s.length
    }
    if (!ok) {
      t.fail(`range ${offset}+${length} mapped wrongly: ${JSON.stringify(spans)}`)
      return
    }
  }
  t.pass('300 random ranges match the model')
})

t.test('thin: recorded pool metadata', async (t) => {
  const meta = parseThinDump(fixture('thin-pool-metadata.xml'))
  t.equal(meta.blockSectors, 128)
  t.same([...meta.devices.keys()], [1, 2])
  // Adjacent runs that continue each other on the data device are joined (0..15 and 17..19 are not).
  t.same(meta.devices.get(2), { devId: 2, origin: [0, 1024], data: [0, 20], length: [20, 2] })

  const pool = table('thin-pool.table')[0] as ThinPoolTarget
  const thinCases: Array<{ name: string; devId: number; offset: number; length: number; want: Span[] }> = [
    { name: 'mapped run', devId: 1, offset: 0, length: 16 * BLOCK, want: [span(poolData, 0, 16 * BLOCK)] },
    { name: 'inside one block', devId: 1, offset: 3 * BLOCK + 100, length: 200, want: [span(poolData, 3 * BLOCK + 100, 200)] },
    {
      name: 'across runs: the overwritten block went elsewhere', devId: 1, offset: 15 * BLOCK + 100, length: 3 * BLOCK,
      want: [span(poolData, 15 * BLOCK + 100, BLOCK - 100), span(poolData, 40 * BLOCK, BLOCK), span(poolData, 17 * BLOCK, BLOCK + 100)],
    },
    { name: 'snapshot keeps the original block', devId: 2, offset: 16 * BLOCK, length: BLOCK, want: [span(poolData, 16 * BLOCK, BLOCK)] },
    { name: 'unmapped: a hole', devId: 1, offset: 20 * BLOCK, length: 80 * BLOCK, want: [hole(80 * BLOCK)] },
    { name: 'hole then mapped single block', devId: 1, offset: 99 * BLOCK + 10, length: BLOCK, want: [hole(BLOCK - 10), span(poolData, 41 * BLOCK, 10)] },
    {
      name: 'mapped, hole, mapped', devId: 2, offset: 19 * BLOCK, length: 1006 * BLOCK,
      want: [span(poolData, 19 * BLOCK, BLOCK), hole(1004 * BLOCK), span(poolData, 20 * BLOCK, BLOCK)],
    },
    { name: 'past the last mapping', devId: 2, offset: 1026 * BLOCK, length: 5 * BLOCK, want: [hole(5 * BLOCK)] },
  ]
  for (const c of thinCases) {
    const got = mapThinRange(meta, c.devId, pool.data, c.offset, c.length)
    t.same(got, c.want, c.name)
    t.equal(total(got), c.length, `${c.name}: lengths add up`)
  }

  t.same(
    mapThinRange(meta, 2, poolData, 19 * BLOCK, 12 * BLOCK, { dev: dev(253, 5), size: 30 * BLOCK }),
    [span(poolData, 19 * BLOCK, BLOCK), span(dev(253, 5), 20 * BLOCK, 10 * BLOCK), hole(BLOCK)],
    'external origin: unprovisioned blocks come from the origin, zeros past its end',
  )
  t.throws(() => mapThinRange(meta, 7, poolData, 0, 1), /thin device 7 is not in the pool's metadata/)

  // The whole chain as the stack drives it: the thin volume's table, then the pool's metadata.
  const viaTable = mapDmRange(table('thin-snapshot.table'), 15 * BLOCK, 2 * BLOCK, (target, o, l) => mapThinRange(meta, target.devId, pool.data, o, l))
  t.same(viaTable, [span(poolData, 15 * BLOCK, 2 * BLOCK)], 'thin target through mapDmRange: the snapshot still has block 16 in place')
  t.throws(() => mapDmRange(table('thin-volume.table'), 0, 1), /needs the pool's metadata/, 'no thin mapper: a clear error')
  t.throws(() => mapDmRange(table('thin-pool.table'), 0, 1), /thin-pool device is not a filesystem's device/)
})

t.test('malformed tables give clear errors', async (t) => {
  const bad: Array<[string, RegExp]> = [
    ['', /table is empty/],
    ['0 100 linear 8:16', /line 1 .*linear takes <dev> <offset>, got 1 arguments/],
    ['0 100 linear sdb 0', /device "sdb" is neither major:minor nor a \/dev path/],
    ['0 x linear 8:16 0', /length "x" is not a number/],
    ['0 -5 linear 8:16 0', /length "-5" is not a number/],
    ['0 0 linear 8:16 0', /length is 0/],
    ['0 100', /expected "<start> <length> <type> <args...>"/],
    ['0 100 linear 8:16 0\n200 100 linear 8:32 0', /line 2 .*starts at sector 200, expected 100 \(gap or overlap\)/],
    ['0 100 linear 8:16 0\n50 100 linear 8:32 0', /starts at sector 50, expected 100/],
    ['10 100 linear 8:16 0', /starts at sector 10, expected 0/],
    ['0 2048 crypt aes-xts-plain64 :64:logon:cryptsetup:x 0 8:16 4096', /target "crypt" cannot be mapped/],
    ['0 2048 snapshot 253:3 253:4 P 8', /target "snapshot" cannot be mapped/],
    ['0 1024 striped 2 128 8:16 0', /striped with 2 stripes takes 6 arguments, got 4/],
    ['0 1000 striped 2 128 8:16 0 8:32 0', /length 1000 is not a whole number of 128-sector chunks on each of 2 stripes/],
    ['0 1024 striped 2 0 8:16 0 8:32 0', /chunk size is 0/],
    ['0 1024 striped 0 128', /at least one stripe/],
    ['0 100 thin 253:2', /thin takes <pool dev> <dev id>/],
    ['0 100 thin-pool 253:0 253:1 0 10', /data block size is 0/],
    ['0 99999999999999999999 linear 8:16 0', /too large/],
  ]
  for (const [text, re] of bad) t.throws(() => parseDmTable(text, recordedHost), re, JSON.stringify(text))
  t.throws(() => mapDmRange(table('lvm-linear-two-pvs.table'), 1.5 * GiB - 10, 11), /outside the device-mapper device/)
})

t.test('malformed thin_dump output gives clear errors', async (t) => {
  const sb = (body: string) => `<superblock uuid="" time="0" transaction="1" data_block_size="128" nr_data_blocks="100">\n${body}\n</superblock>\n`
  const bad: Array<[string, RegExp]> = [
    ['', /no <superblock>/],
    ['<superblock uuid="" time="0"></superblock>', /line 1 .*missing data_block_size/],
    [sb('<device dev_id="1">\n<range_mapping origin_begin="0" data_begin="0"/>\n</device>'), /line 3 .*missing length/],
    [sb('<device dev_id="1">\n<single_mapping origin_block="x" data_block="0"/>\n</device>'), /origin_block="x" is not a number/],
    [sb('<single_mapping origin_block="1" data_block="0"/>'), /mapping outside a <device>/],
    [sb('<device dev_id="1">\n<single_mapping origin_block="1" data_block="0"/>'), /device dev_id="1"> is not closed/],
    [sb('<device dev_id="1">\n<range_mapping origin_begin="0" data_begin="0" length="4"/>\n<single_mapping origin_block="2" data_block="9"/>\n</device>'), /maps block 2 twice/],
    [sb('<device dev_id="1"></device>\n<device dev_id="1"></device>'), /device 1 appears twice/],
    [sb('<def name="13"></def>'), /shared-subtree output is not supported/],
    [sb('<device dev_id="1">\n<frobnicate/>\n</device>'), /unknown element/],
    [sb('<device dev_id="1" mapped_blocks=3></device>'), /malformed attributes/],
  ]
  for (const [xml, re] of bad) t.throws(() => parseThinDump(xml), re, JSON.stringify(xml.slice(0, 60)))
  t.same(parseThinDump(sb('<device dev_id="4" mapped_blocks="0"/>')).devices.get(4), { devId: 4, origin: [], data: [], length: [] }, 'a device with no mappings')
})

t.test('live device-mapper', { skip: existsSync(DM_CONTROL) ? false : `${DM_CONTROL} is missing: this kernel has no device-mapper` }, async (t) => {
  // With device-mapper present, any existing dm device's table must parse and resolve end to end.
  const { readdirSync } = await import('node:fs')
  const dms = readdirSync('/sys/block').filter((n) => n.startsWith('dm-'))
  if (dms.length === 0) {
    t.skip('device-mapper works but no dm device exists to read', () => undefined)
    return
  }
  for (const name of dms) {
    const [major, minor] = readFileSync(`/sys/block/${name}/dev`, 'utf8').trim().split(':').map(Number)
    const targets = readDmTable({ major, minor })
    t.ok(targets.length > 0, `${name}: ${targets.map((x) => x.type).join(', ')}`)
  }
})
