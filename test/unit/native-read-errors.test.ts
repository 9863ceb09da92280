// The C read path's error handling, called through the addon with no mount (readFile: native/view/read.c's
// plan and pread(2) on the device fds packed in the tables, as the FUSE read serves it). Devices that
// fail with real kernel errors, no root needed: /proc/self/mem at addresses nothing is mapped at (EIO),
// a file opened write-only (EBADF), a file shorter than its extents (a short read). A read that touches
// a failing device answers an errno and the `read failed` event a mount logs (the failed piece's file
// offset, device and device offset, what the device said), never bytes; every read that does not
// touch it is exact; and nothing of a failure is kept: once the device reads, so does the file.
// test/e2e/media-errors.test.ts does the same through a mount, with a device that fails on one range.
import t from 'tap'
import { closeSync, openSync, promises as fsp, readFileSync, writeFileSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { viewAddon } from '../../src/native-engine/addon'
import { validateManifest } from '../../src/manifest/validate'
import { seededBytes } from '../helpers/populate'
import { extent, makeDevice, makeInode, makeManifest } from '../helpers/manifest-factory'
import { packedTables } from '../helpers/packed-tables'

const KiB = 1024
const EIO = 5
const addon = viewAddon()

/** Addresses of this process nothing is mapped at, read through /proc/self/mem: EIO from the kernel. */
const MEM_AT = 64 * KiB
const MEM_LEN = 2048 * KiB

t.test('read errors of the C read path, without a mount', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'wt-media-read-errors-'))
  const fds: number[] = []
  t.teardown(async () => {
    for (const fd of fds) closeSync(fd)
    await fsp.rm(dir, { recursive: true, force: true })
  })
  const lowest = Math.min(...readFileSync('/proc/self/maps', 'utf8').trim().split('\n').map((l) => parseInt(l.split('-')[0]!, 16)))
  t.ok(lowest >= MEM_AT + MEM_LEN, `nothing mapped below ${MEM_AT + MEM_LEN} (lowest mapping ${lowest})`)

  const good = seededBytes(7, 1024 * KiB)
  const open = (file: string, flags: string, content?: Buffer) => {
    if (content) writeFileSync(file, content)
    const fd = openSync(file, flags)
    fds.push(fd)
    return fd
  }
  const shortFile = path.join(dir, 'short')
  const deviceFds = [
    open(path.join(dir, 'good'), 'r', good),      // d0: reads
    open('/proc/self/mem', 'r'),                   // d1: EIO (nothing mapped there)
    open(path.join(dir, 'wronly'), 'w', good),     // d2: EBADF (not open for reading)
    open(shortFile, 'r', good.subarray(0, 8 * KiB)), // d3: 8 KiB where 64 KiB are expected: a short read
  ]

  const m = makeManifest()
  m.devices = [makeDevice('d0', good.length), makeDevice('d1', MEM_AT + MEM_LEN), makeDevice('d2', good.length), makeDevice('d3', good.length)]
  const names = ['mixed', 'wronly', 'short', 'unaligned']
  m.inodes = [
    makeInode(1, 'dir', { nlink: 2, size: 4096, entries: names.map((name, i) => ({ name, ino: 2 + i })) }),
    // data on d0, a hole, data on d1 (failing), data on d0 again
    makeInode(2, 'file', { size: 1024 * KiB, extents: [extent(0, 0, 0, 256 * KiB), extent(512 * KiB, 1, MEM_AT, 256 * KiB), extent(768 * KiB, 0, 512 * KiB, 256 * KiB)] }),
    makeInode(3, 'file', { size: 100 * KiB, extents: [extent(0, 2, 0, 100 * KiB)] }),
    makeInode(4, 'file', { size: 64 * KiB, extents: [extent(0, 3, 0, 64 * KiB)] }),
    // off 4096-alignment on the device (the bounce buffer's path): 1000 bytes into each device
    makeInode(5, 'file', { size: 20 * KiB, extents: [extent(0, 0, 1000, 8 * KiB), extent(8 * KiB, 1, MEM_AT + 1000, 12 * KiB)] }),
  ]
  const { image, paths } = packedTables(validateManifest(m), deviceFds)
  t.equal(addon.checkTables(image), null, 'the tables are accepted')
  const idx = (ino: number) => paths.index(ino)
  const read = (ino: number, offset: number, size: number) => addon.readFile(image, idx(ino), offset, size)
  const zeros = (n: number) => Buffer.alloc(n)

  t.test('reads that touch no failing device are exact', async (t) => {
    t.same(read(2, 0, 512 * KiB), { errno: 0, bytes: Buffer.concat([good.subarray(0, 256 * KiB), zeros(256 * KiB)]) }, 'data, then the hole before the failing extent')
    t.same(read(2, 768 * KiB, 256 * KiB), { errno: 0, bytes: good.subarray(512 * KiB, 768 * KiB) }, 'the extent after it')
    t.same(read(2, 1000 * KiB, 100 * KiB), { errno: 0, bytes: good.subarray(744 * KiB, 768 * KiB) }, 'clipped at EOF')
    t.same(read(5, 100, 8 * KiB - 100), { errno: 0, bytes: good.subarray(1100, 1000 + 8 * KiB) }, 'an unaligned device offset')
  })

  t.test('a device that answers EIO: the read is EIO, naming the failed piece; never bytes', async (t) => {
    const whole = read(2, 0, 1024 * KiB)
    t.same(whole, { errno: EIO, failed: { offset: 512 * KiB, device: 1, deviceOffset: MEM_AT, reason: `pread of ${256 * KiB} bytes at ${MEM_AT}: Input/output error` } },
      'the whole file: EIO at the failing extent\'s first byte, its device and device offset')
    t.notOk('bytes' in whole, 'no bytes: not the good pieces around it, not zeros')
    t.match(read(2, 600 * KiB, 100 * KiB), { errno: EIO, failed: { offset: 600 * KiB, device: 1, deviceOffset: MEM_AT + 88 * KiB } }, 'a read inside the extent names where it starts')
    t.match(read(2, 512 * KiB - 1, 2), { errno: EIO, failed: { offset: 512 * KiB, device: 1 } }, 'two bytes, one of them on the failing device')
    t.match(read(5, 0, 20 * KiB), { errno: EIO, failed: { offset: 8 * KiB, device: 1, deviceOffset: MEM_AT + 1000, reason: /Input\/output error/ } },
      'through the bounce buffer (unaligned device offset)')
  })

  t.test('other kernel errors and short reads are EIO too', async (t) => {
    t.match(read(3, 4096, 10), { errno: EIO, failed: { offset: 4096, device: 2, deviceOffset: 4096, reason: /Bad file descriptor/ } }, 'EBADF')
    t.match(read(4, 0, 64 * KiB), { errno: EIO, failed: { offset: 0, device: 3, deviceOffset: 0, reason: /^short read: 8192 of 65536 bytes at 0$/ } }, 'a short read')
    t.same(read(4, 0, 8 * KiB), { errno: 0, bytes: good.subarray(0, 8 * KiB) }, 'the bytes the device has are served')
  })

  t.test('nothing of a failure is kept: once the device reads, so does the file', async (t) => {
    t.equal(read(4, 0, 64 * KiB).errno, EIO, 'short')
    await fsp.writeFile(shortFile, good.subarray(0, 64 * KiB))
    t.same(read(4, 0, 64 * KiB), { errno: 0, bytes: good.subarray(0, 64 * KiB) }, 'the device has all of it now: exact')
    t.same(read(2, 0, 256 * KiB), { errno: 0, bytes: good.subarray(0, 256 * KiB) }, 'and a read of another device after a failure is exact')
  })

  t.test('arguments', async (t) => {
    t.throws(() => addon.readFile(image, 0, 0, 10), /readFile: not a regular file/, 'the root')
    t.throws(() => addon.readFile(image, 99, 0, 10), /readFile: inode index out of range/)
    t.throws(() => addon.readFile(image, idx(2), -1, 10), /readFile\(tables, index, offset >= 0/)
    t.throws(() => addon.readFile(Buffer.from('nope'), 0, 0, 10), /readFile: not a table image/)
    t.same(read(2, 2048 * KiB, 10), { errno: 0, bytes: Buffer.alloc(0) }, 'past EOF: nothing, no I/O')
  })
})
