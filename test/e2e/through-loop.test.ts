// A real two-level stack: ext4 inside an image file on XFS (reflink) on a loop device. Files of the inner
// filesystem are FIEMAPped, resolved through DeviceStack({ throughLoop: true }) down to the OUTER loop
// device, read from there with O_DIRECT and compared byte for byte. Then the thin-snapshot stand-in: a
// reflink clone of the image, attached read-only, still maps to its own (original) bytes while the
// owner keeps writing the original. Only the first loop device is gone through (DeviceStack's default):
// the outer one stands for the disk the mover shares. Needs root, loop devices, mkfs.xfs, mkfs.ext4, sfdisk, partx.
import t, { Test } from 'tap'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import * as path from 'node:path'
import { runOk } from '../helpers/exec'
import { createLoopFs, destroyLoopFs, type LoopFs } from '../helpers/loopfs'
import { attachReadOnly, createNestedFs, destroyNestedFs, type NestedFs } from '../helpers/nested-loop'
import { DeviceStack } from '../../src/mapping/stack'
import { linux, FIEMAP_EXTENT_UNWRITTEN } from '../../src/linux'
import { rawDeviceOf, splitDev } from '../../src/mapping/blockdev'
import { RawDevice } from '../../src/device/reader'
import type { RawSpan } from '../../src/mapping/span'

const KiB = 1024
const MiB = 1024 * KiB

/** Block-boundary sizes, one multi-extent-sized file, and a sparse one (data, 3 MiB hole, data). */
const SIZES: Record<string, number> = { 'one-byte': 1, 'under-a-block': 4095, 'one-block': 4096, 'odd-100k': 100_000, 'over-a-mib': MiB + 123 }

/** Write the test files; returns their expected content by name. */
function writeFiles(dir: string): Map<string, Buffer> {
  const want = new Map<string, Buffer>()
  for (const [name, size] of Object.entries(SIZES)) {
    const data = randomBytes(size)
    fs.writeFileSync(path.join(dir, name), data)
    want.set(name, data)
  }
  const sparse = Buffer.alloc(3 * MiB + 8192)
  randomBytes(8192).copy(sparse, 0)
  randomBytes(8192).copy(sparse, 3 * MiB)
  const fd = fs.openSync(path.join(dir, 'sparse'), 'w')
  fs.writeSync(fd, sparse, 0, 8192, 0)
  fs.writeSync(fd, sparse, 3 * MiB, 8192, 3 * MiB)
  fs.closeSync(fd)
  want.set('sparse', sparse)
  return want
}

/** A file's bytes as planned from the raw disks: per FIEMAP extent, the stack's raw spans. */
interface RawPlan {
  size: number
  pieces: { fileOffset: number; spans: RawSpan[] }[]
}

function planFile(stack: DeviceStack, file: string): RawPlan {
  const fd = fs.openSync(file, 'r')
  try {
    const st = fs.fstatSync(fd, { bigint: true })
    const size = Number(st.size)
    const dev = splitDev(st.dev)
    // FIEMAP's physical is an offset on the filesystem's own device (st_dev): where the stack starts.
    const extents = linux.fiemap(fd).filter((e) => !(e.flags & FIEMAP_EXTENT_UNWRITTEN) && e.logical < size)
    return {
      size,
      pieces: extents.map((e) => ({ fileOffset: e.logical, spans: stack.resolve(dev, e.physical, Math.min(e.length, size - e.logical)) })),
    }
  } finally {
    fs.closeSync(fd)
  }
}

/** Read a plan's bytes with O_DIRECT from the raw disks; returns the bytes and the disks used. */
function readPlan(plan: RawPlan): { data: Buffer; disks: Set<string> } {
  const data = Buffer.alloc(plan.size) // holes stay zero
  const devices = new Map<string, RawDevice>()
  try {
    for (const p of plan.pieces) {
      let pos = p.fileOffset
      for (const s of p.spans) {
        if (s.raw) {
          let d = devices.get(s.raw.path)
          if (!d) devices.set(s.raw.path, (d = RawDevice.open(s.raw.name, s.raw.path)))
          d.readExact(data, pos, s.length, s.offset)
        }
        pos += s.length
      }
    }
    return { data, disks: new Set(devices.keys()) }
  } finally {
    for (const d of devices.values()) d.close()
  }
}

function checkFiles(t: Test, stack: DeviceStack, dir: string, want: Map<string, Buffer>, outerDevice: string, what: string): void {
  for (const [name, content] of want) {
    const { data, disks } = readPlan(planFile(stack, path.join(dir, name)))
    t.same([...disks], [outerDevice], `${what}: ${name} is read from the outer device only`)
    t.ok(data.equals(content), `${what}: ${name} (${content.length} bytes) matches byte for byte`)
  }
}

let outer: LoopFs | undefined
const nested: NestedFs[] = []

async function cleanUp(): Promise<void> {
  // Inner before outer: the outer filesystem cannot go while an image on it is attached.
  for (const n of nested.splice(0).reverse()) {
    const problems = await destroyNestedFs(n)
    if (problems.length) console.error(`nested cleanup: ${problems.join('; ')}`)
  }
  if (outer) {
    const problems = await destroyLoopFs(outer)
    if (problems.length) console.error(`outer cleanup: ${problems.join('; ')}`)
    outer = undefined
  }
}
t.teardown(cleanUp)

t.before(async () => {
  outer = await createLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] })
})

t.test('ext4 in an image on XFS, read back from the outer loop device', async (t) => {
  const o = outer!
  const inner = await createNestedFs(path.join(o.mountpoint, 'inner.img'), { sizeMiB: 64 })
  nested.push(inner)
  const want = writeFiles(inner.mountpoint)
  await runOk('sync', ['-f', inner.mountpoint])
  checkFiles(t, new DeviceStack({ throughLoop: true }), inner.mountpoint, want, o.loopDevice, 'through the loop')

  // Without throughLoop the inner loop device is the raw disk, as before.
  const plan = planFile(new DeviceStack({ throughLoop: false }), path.join(inner.mountpoint, 'odd-100k'))
  t.same([...new Set(plan.pieces.flatMap((p) => p.spans.map((s) => s.raw?.path)))], [inner.loopDevice], 'without throughLoop the inner loop device is the disk')
  const stack = new DeviceStack({ throughLoop: true })
  planFile(stack, path.join(inner.mountpoint, 'one-block'))
  t.same(stack.disks().map((d) => d.path), [o.loopDevice], 'disks() lists the outer device')
  const st = fs.statSync(path.join(inner.mountpoint, 'one-block'), { bigint: true })
  t.equal(stack.disk(splitDev(st.dev)).path, inner.loopDevice, 'disk() of a loop device: the loop device itself')

  // Two loop levels: through the outer loop device too, onto the disk under the outer image. The mover
  // could not open that disk here (it is the host's), so only the mapping is checked.
  const host = splitDev(fs.statSync(o.image, { bigint: true }).dev)
  if (!fs.existsSync(`/sys/dev/block/${host.major}:${host.minor}`)) {
    t.skip(`the outer image's filesystem (${host.major}:${host.minor}) is not on a block device`, () => undefined)
  } else {
    const deep = planFile(new DeviceStack({ throughLoop: true, loopLevels: 2 }), path.join(inner.mountpoint, 'over-a-mib'))
    const disks = [...new Set(deep.pieces.flatMap((p) => p.spans.flatMap((s) => (s.raw ? [s.raw.path] : []))))]
    t.same(disks, [rawDeviceOf(host.major, host.minor).path], 'loopLevels 2 goes on to the disk under the outer image')
  }
})

t.test('a read-only reflink clone of the image keeps its bytes while the original is written', async (t) => {
  const o = outer!
  const inner = nested[0]
  const names = [...Object.keys(SIZES), 'sparse']
  const before = new Map(names.map((n) => [n, fs.readFileSync(path.join(inner.mountpoint, n))]))

  // Freeze the inner filesystem for the clone so the image is clean (no journal to replay).
  const cloneImage = path.join(o.mountpoint, 'clone.img')
  await runOk('fsfreeze', ['-f', inner.mountpoint])
  try {
    await runOk('cp', ['--reflink=always', inner.image, cloneImage])
  } finally {
    await runOk('fsfreeze', ['-u', inner.mountpoint])
  }
  const clone = await attachReadOnly(cloneImage, { partitioned: false })
  nested.push(clone)
  t.equal(fs.readFileSync(`/sys/block/${path.basename(clone.loopDevice)}/ro`, 'utf8').trim(), '1', 'the clone is attached read-only')

  // Map the clone now, read it after the owner has written: the mapping must still hold.
  const early = new DeviceStack({ throughLoop: true })
  const plans = new Map(names.map((n) => [n, planFile(early, path.join(clone.mountpoint, n))]))

  // The owner keeps writing: overwrite every file in place with new bytes, and append.
  const after = new Map<string, Buffer>()
  for (const n of names) {
    const fresh = Buffer.concat([randomBytes(before.get(n)!.length), randomBytes(5000)])
    const fd = fs.openSync(path.join(inner.mountpoint, n), 'r+')
    fs.writeSync(fd, fresh, 0, fresh.length, 0)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    after.set(n, fresh)
  }
  await runOk('sync', ['-f', inner.mountpoint])
  await runOk('sync', ['-f', o.mountpoint])

  for (const n of names) {
    t.ok(readPlan(plans.get(n)!).data.equals(before.get(n)!), `mapped before the writes: clone ${n} still reads the original bytes`)
  }
  checkFiles(t, new DeviceStack({ throughLoop: true }), clone.mountpoint, before, o.loopDevice, 'clone mapped after the writes')
  checkFiles(t, new DeviceStack({ throughLoop: true }), inner.mountpoint, after, o.loopDevice, 'original mapped after the writes')
})

t.test('ext4 on a GPT partition of an image on XFS', async (t) => {
  const o = outer!
  const inner = await createNestedFs(path.join(o.mountpoint, 'partitioned.img'), { sizeMiB: 64, partition: true })
  nested.push(inner)
  t.equal(inner.fsDevice, `${inner.loopDevice}p1`)
  const want = writeFiles(inner.mountpoint)
  await runOk('sync', ['-f', inner.mountpoint])
  const stack = new DeviceStack({ throughLoop: true })
  checkFiles(t, stack, inner.mountpoint, want, o.loopDevice, 'partition, loop, XFS, loop')
  const partition = splitDev(fs.statSync(path.join(inner.mountpoint, 'one-block'), { bigint: true }).dev)
  t.throws(() => stack.disk(partition), /loop\d+p1 is a partition, not a raw disk/)
})
