// What prefetch (native/view/prefetch.c) takes from a directory, called through the addon's
// prefetchPlan with no mount and no I/O: which files, coalesced into which device reads, and where
// the window stops it. The mount-level behaviour (stores, deltas, release, media errors) is in
// test/e2e/prefetch.test.ts and media-errors.test.ts.
import t from 'tap'
import type { Inode, Manifest } from '../../src/manifest/types'
import { validateManifest } from '../../src/manifest/validate'
import { viewAddon } from '../../src/native-engine/addon'
import { extent, makeDevice, makeInode, makeManifest } from '../helpers/manifest-factory'
import { packedTables } from '../helpers/packed-tables'

const KiB = 1024
const MiB = 1024 * KiB
const addon = viewAddon()

/** A root directory holding `files` (named as given; the tables sort entries by name). */
function manifestOf(files: Record<string, Partial<Inode> & { kind?: Inode['kind'] }>): Manifest {
  const m = makeManifest()
  m.features = ['inline-data']
  m.devices = [makeDevice('d0', 64 * MiB), makeDevice('d1', 64 * MiB)]
  const root = makeInode(1, 'dir', { nlink: 2, size: 4096, entries: [] })
  m.inodes = [root]
  let ino = 10
  for (const [name, f] of Object.entries(files)) {
    const { kind = 'file', ...rest } = f
    root.entries!.push({ name, ino })
    m.inodes.push(makeInode(ino++, kind, rest))
  }
  return validateManifest(m)
}

/** The plan with files named instead of indexed. */
function planOf(m: Manifest, window: number) {
  const { image, paths } = packedTables(m, m.devices.map(() => -1))
  return addon.prefetchPlan(image, paths.index(m.root), window).map((u) => ({
    ...u, files: u.files.map((f) => ({ ...f, index: paths.path(f.index) })),
  }))
}

t.test('neighbours coalesce into one device read; anything else starts another, or is read alone', async (t) => {
  const m = manifestOf({
    a01: { size: 4096, extents: [extent(0, 0, MiB, 4096)] },
    a02: { size: 5000, extents: [extent(0, 0, MiB + 4096, 8192)] }, // adjacent
    a03: { size: 100, extents: [extent(0, 0, MiB + 12288 + 32 * KiB, 4096)] }, // a 32 KiB gap: read through
    a04: { size: 4096, extents: [extent(0, 0, 10 * MiB, 4096)] }, // far: a new read
    a05: { size: 5, inline: Buffer.from('hello').toString('base64') }, // no I/O: joins any read
    a06: { size: 8192, extents: [extent(0, 0, 20 * MiB, 4096), extent(4096, 0, 30 * MiB, 4096)] }, // two places: alone
    a07: { size: 2 * MiB, extents: [extent(0, 0, 40 * MiB, 2 * MiB)] }, // over 1 MiB: not prefetched
    a08: { size: 0 }, // nothing to read
    a09: { size: 4096, extents: [extent(0, 1, 0, 4096)] }, // another device: a new read
    a10: { kind: 'symlink', size: 1, target: 'x' },
    a11: { size: 8192, extents: [extent(4096, 1, 8192, 4096)] }, // a hole first: alone
    a12: { size: 4096, extents: [extent(0, 1, 4096, 4096)] },
  })
  t.same(planOf(m, 32 * MiB), [
    { device: 0, start: MiB, end: MiB + 12288 + 32 * KiB + 4096, files: [
      { index: '/a01', kind: 'span', at: 0 }, { index: '/a02', kind: 'span', at: 4096 }, { index: '/a03', kind: 'span', at: 12288 + 32 * KiB }] },
    { device: 0, start: 10 * MiB, end: 10 * MiB + 4096, files: [{ index: '/a04', kind: 'span', at: 0 }, { index: '/a05', kind: 'inline', at: 0 }] },
    { device: 0, start: 0, end: 0, files: [{ index: '/a06', kind: 'slow', at: 0 }] },
    { device: 1, start: 0, end: 4096, files: [{ index: '/a09', kind: 'span', at: 0 }] },
    { device: 0, start: 0, end: 0, files: [{ index: '/a11', kind: 'slow', at: 0 }] },
    { device: 1, start: 4096, end: 8192, files: [{ index: '/a12', kind: 'span', at: 0 }] },
  ])
})

t.test('a gap over 64 KiB, or a read over 1 MiB or 256 files, starts another read', async (t) => {
  const gap = manifestOf({ a: { size: 4096, extents: [extent(0, 0, 0, 4096)] }, b: { size: 4096, extents: [extent(0, 0, 4096 + 64 * KiB + 4096, 4096)] } })
  t.equal(planOf(gap, MiB).length, 2, 'a gap of 68 KiB: two reads')
  const files: Record<string, Partial<Inode>> = {}
  for (let i = 0; i < 300; i++) files[`f${String(i).padStart(3, '0')}`] = { size: 4096, extents: [extent(0, 0, i * 4096, 4096)] }
  const plan = planOf(manifestOf(files), 32 * MiB)
  t.same(plan.map((u) => [u.start, u.end, u.files.length]), [[0, MiB, 256], [MiB, 300 * 4096, 44]], '256 files of a page fill 1 MiB: then the next read')
  const big: Record<string, Partial<Inode>> = {}
  for (let i = 0; i < 4; i++) big[`g${i}`] = { size: 300 * KiB, extents: [extent(0, 0, i * 300 * KiB, 300 * KiB)] }
  t.same(planOf(manifestOf(big), 32 * MiB).map((u) => u.files.length), [3, 1], 'no read over 1 MiB: three files of 300 KiB, then the fourth')
})

t.test('the window: files taken count whole pages, and nothing is taken past it', async (t) => {
  const files: Record<string, Partial<Inode>> = {}
  for (let i = 0; i < 100; i++) files[`f${String(i).padStart(3, '0')}`] = { size: 100, extents: [extent(0, 0, i * 4096, 4096)] }
  const m = manifestOf(files)
  t.same(planOf(m, 64 * KiB).map((u) => u.files.length), [16], '100-byte files count a page each: 16 in 64 KiB')
  t.same(planOf(m, 8191).map((u) => u.files.length), [1], 'a window is whole pages: 8191 bytes hold one')
  t.same(planOf(m, 0), [], 'a window of 0 takes nothing')
  t.same(planOf(m, MiB).map((u) => u.files.length), [100], 'all of them within 1 MiB')
})

t.test('bad arguments are refused', async (t) => {
  const m = manifestOf({ a: { size: 4096, extents: [extent(0, 0, 0, 4096)] } })
  const { image, paths } = packedTables(m, [-1, -1])
  t.throws(() => addon.prefetchPlan(image, paths.index(10), MiB), /prefetchPlan: not a directory/)
  t.throws(() => addon.prefetchPlan(image, 99, MiB), /prefetchPlan: inode index out of range/)
  t.throws(() => addon.prefetchPlan(image, 0, 512 * MiB), /prefetchPlan\(tables, dirIndex, 0 <= window <= 256 MiB\)/)
})
