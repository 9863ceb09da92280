// The N-API addon against the real kernel: a loop-mounted ext4 for FIEMAP, freeze and xattrs, and an
// unmounted loop device over a known pattern for O_DIRECT reads. Needs root, losetup and mkfs.ext4.
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import {
  linux,
  FIEMAP_EXTENT_DATA_INLINE,
  FIEMAP_EXTENT_LAST,
  FIEMAP_EXTENT_NOT_ALIGNED,
  FIEMAP_EXTENT_UNWRITTEN,
} from '../../src/linux'

const KiB = 1024
const MiB = 1024 * KiB
const O_DIRECT_RDONLY = fs.constants.O_RDONLY | fs.constants.O_DIRECT

const run = (cmd: string, ...args: string[]): string =>
  execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim()

// ------------------------------------------------------------------ fixtures (cleaned on any exit)

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'extfs-native-'))
const loops: string[] = [] // devices we attached, detached by name (never `losetup -D`)
const fds: number[] = []
const mounts: string[] = []
let frozenFd: number | undefined // the mountpoint fd, for a last-resort thaw

// Best effort on every step, so one failure does not leave the rest behind; idempotent.
function cleanUp(): void {
  const errors: unknown[] = []
  const attempt = (step: () => void) => { try { step() } catch (err) { errors.push(err) } }
  thawQuietly()
  for (const fd of fds.splice(0)) attempt(() => fs.closeSync(fd))
  for (const dir of mounts.splice(0)) attempt(() => umount(dir))
  for (const dev of loops.splice(0)) attempt(() => run('losetup', '-d', dev))
  attempt(() => fs.rmSync(tmp, { recursive: true, force: true }))
  if (errors.length > 0) throw errors[0]
}

// A writer blocked on a frozen filesystem cannot be killed, so a test that fails between freeze
// and thaw must not leave the filesystem frozen for the next test or for umount.
function thawQuietly(): void {
  if (frozenFd === undefined) return
  try { linux.thaw(frozenFd) } catch { /* EINVAL: not frozen, the normal case */ }
}

function umount(dir: string): void {
  // A just-closed fd can keep the mount busy for a moment; retry rather than fail the run.
  for (let attempt = 0; ; attempt++) {
    try {
      run('umount', dir)
      return
    } catch (err) {
      if (attempt >= 20) throw err
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100)
    }
  }
}

function attach(image: string): string {
  const dev = run('losetup', '-f', '--show', image)
  loops.push(dev)
  return dev
}

function open(file: string, flags: number | string = 'r'): number {
  const fd = fs.openSync(file, flags)
  fds.push(fd)
  return fd
}

function setUp() {
  // A sparse 64 MiB ext4 with inline_data, so tiny files live in the inode. 4 KiB blocks as on real
  // filesystems (mkfs picks 1 KiB for one this small). Inode tables are initialised at mkfs time so
  // no background thread rewrites the device while we compare bytes.
  const ext4Image = path.join(tmp, 'ext4.img')
  fs.writeFileSync(ext4Image, '')
  fs.truncateSync(ext4Image, 64 * MiB)
  const ext4Dev = attach(ext4Image)
  run('mkfs.ext4', '-q', '-b', '4096', '-O', 'inline_data', '-E', 'lazy_itable_init=0,lazy_journal_init=0', ext4Dev)
  const mnt = path.join(tmp, 'mnt')
  fs.mkdirSync(mnt)
  run('mount', ext4Dev, mnt)
  mounts.push(mnt)
  const mntFd = open(mnt)
  frozenFd = mntFd

  // An unmounted device over random bytes; its size is a whole number of 512-byte sectors but not
  // of 4096-byte pages, so the last aligned read comes back short.
  const pattern = randomBytes(3 * MiB + 512)
  const patternImage = path.join(tmp, 'pattern.img')
  fs.writeFileSync(patternImage, pattern)
  const patternDev = attach(patternImage)

  return {
    ext4Image, mnt, mntFd, pattern,
    ext4DevFd: open(ext4Dev, O_DIRECT_RDONLY),
    patternFd: open(patternDev, O_DIRECT_RDONLY),
  }
}

t.teardown(cleanUp)
t.afterEach(thawQuietly)
let fixture: ReturnType<typeof setUp>
try {
  fixture = setUp()
} catch (err) {
  cleanUp() // a throw here ends the process before tap runs teardowns
  throw err
}
const { ext4Image, mnt, mntFd, pattern, ext4DevFd, patternFd } = fixture

function fileBytes(file: string, position: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(length)
    fs.readSync(fd, buf, 0, length, position)
    return buf
  } finally {
    fs.closeSync(fd)
  }
}

function deviceBytes(fd: number, position: number, length: number): Buffer {
  const buf = Buffer.alloc(length)
  const n = linux.preadDirect(fd, buf, 0, length, position)
  return buf.subarray(0, n)
}

function fiemapOf(file: string) {
  const fd = fs.openSync(file, 'r')
  try {
    return linux.fiemap(fd)
  } finally {
    fs.closeSync(fd)
  }
}

// ------------------------------------------------------------------------------------- FIEMAP

t.test('fiemap: a file with a hole has two extents at the right offsets', async t => {
  const file = path.join(mnt, 'holey')
  const fd = fs.openSync(file, 'w')
  fs.writeSync(fd, randomBytes(64 * KiB), 0, 64 * KiB, 0)
  fs.writeSync(fd, randomBytes(64 * KiB), 0, 64 * KiB, 1 * MiB)
  fs.closeSync(fd)

  const extents = fiemapOf(file)
  t.same(extents.map(e => [e.logical, e.length]), [[0, 64 * KiB], [1 * MiB, 64 * KiB]])
  t.equal(extents[0].flags & FIEMAP_EXTENT_LAST, 0)
  t.equal(extents[1].flags & FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_LAST)
  for (const e of extents) {
    t.equal(e.physical % 4096, 0, 'ext4 extents are block aligned')
    t.ok(deviceBytes(ext4DevFd, e.physical, e.length).equals(fileBytes(file, e.logical, e.length)),
      `device bytes at physical ${e.physical} match file bytes at ${e.logical}`)
  }
})

t.test('fiemap: more extents than one ioctl batch returns them all', async t => {
  // 600 separate 4 KiB extents (a hole after each), more than the addon's batch of 256.
  const file = path.join(mnt, 'many')
  const fd = fs.openSync(file, 'w')
  const block = Buffer.alloc(4 * KiB, 'x')
  for (let i = 0; i < 600; i++) fs.writeSync(fd, block, 0, block.length, i * 8 * KiB)
  fs.closeSync(fd)

  const extents = fiemapOf(file)
  t.equal(extents.length, 600)
  t.ok(extents.every((e, i) => e.logical === i * 8 * KiB && e.length === 4 * KiB), 'logical offsets in order')
  t.equal(extents.filter(e => e.flags & FIEMAP_EXTENT_LAST).length, 1, 'only the last is LAST')
  t.ok(extents[599].flags & FIEMAP_EXTENT_LAST)
})

t.test('fiemap: an empty file has no extents', async t => {
  const file = path.join(mnt, 'empty')
  fs.writeFileSync(file, '')
  t.same(fiemapOf(file), [])
})

t.test('fiemap: a fallocated file is UNWRITTEN', async t => {
  const file = path.join(mnt, 'prealloc')
  run('fallocate', '-l', String(1 * MiB), file)
  const extents = fiemapOf(file)
  t.ok(extents.length >= 1)
  t.equal(extents.reduce((sum, e) => sum + e.length, 0), 1 * MiB)
  t.ok(extents.every(e => e.flags & FIEMAP_EXTENT_UNWRITTEN), 'every extent is unwritten')
})

t.test('fiemap: a 3-byte file on inline_data ext4 is DATA_INLINE', async t => {
  const file = path.join(mnt, 'tiny')
  fs.writeFileSync(file, 'abc')
  const extents = fiemapOf(file)
  t.equal(extents.length, 1)
  const [e] = extents
  t.equal(e.logical, 0)
  t.ok(e.flags & FIEMAP_EXTENT_DATA_INLINE, 'DATA_INLINE')
  t.ok(e.flags & FIEMAP_EXTENT_NOT_ALIGNED, 'NOT_ALIGNED')
  t.ok(e.flags & FIEMAP_EXTENT_LAST, 'LAST')
  // Inline data sits in the inode table, written through the journal; freezing checkpoints the
  // journal, so only then does the device hold the bytes at `physical` (the product's order too).
  linux.freeze(mntFd)
  try {
    t.equal(deviceBytes(ext4DevFd, e.physical, 3).toString(), 'abc', 'device bytes at physical')
  } finally {
    linux.thaw(mntFd)
  }
})

t.test('fiemap: a bad fd throws EBADF', async t => {
  t.throws(() => linux.fiemap(987654), { code: 'EBADF', errno: 9, message: 'FS_IOC_FIEMAP: Bad file descriptor' })
  t.throws(() => linux.fiemap(-1), RangeError)
})

// ------------------------------------------------------------------------------- preadDirect

t.test('preadDirect: unaligned reads match the pattern', async t => {
  const cases: Array<[string, number, number]> = [
    ['1 byte at 0', 0, 1],
    ['1 byte at the end of a page', 4095, 1],
    ['1 byte inside the second page', 5000, 1],
    ['crossing one page boundary', 4000, 200],
    ['crossing several page boundaries', 1234, 10000],
    ['a whole aligned page', 8192, 4096],
    ['more than 1 MiB, crossing the 1 MiB chunk', 4097, 1.5 * MiB + 3],
    ['the whole device', 0, pattern.length],
  ]
  for (const [name, position, length] of cases) {
    // Sentinels around the target range show nothing outside it is written.
    const target = Buffer.alloc(length + 14, 0xee)
    t.equal(linux.preadDirect(patternFd, target, 7, length, position), length, name)
    t.ok(target.subarray(7, 7 + length).equals(pattern.subarray(position, position + length)), `${name}: bytes`)
    t.ok(target.subarray(0, 7).every(b => b === 0xee) && target.subarray(7 + length).every(b => b === 0xee),
      `${name}: sentinels untouched`)
  }
})

t.test('preadDirect: short at the end of the device', async t => {
  const size = pattern.length
  t.equal(linux.blockDeviceSize(patternFd), size, 'device size is not a multiple of 4096')
  const target = Buffer.alloc(1000)
  t.equal(linux.preadDirect(patternFd, target, 0, 1000, size - 100), 100, 'last 100 bytes')
  t.ok(target.subarray(0, 100).equals(pattern.subarray(size - 100)))
  t.equal(linux.preadDirect(patternFd, target, 0, 1000, size - 600), 600, 'crossing into the last partial page')
  t.ok(target.subarray(0, 600).equals(pattern.subarray(size - 600)))
  t.equal(linux.preadDirect(patternFd, target, 0, 1000, size), 0, 'at the end')
  t.equal(linux.preadDirect(patternFd, target, 0, 1000, size + 12345), 0, 'past the end')
  t.equal(linux.preadDirect(patternFd, target, 0, 0, 0), 0, 'zero length')
})

t.test('preadDirect: bad arguments throw', async t => {
  const buf = Buffer.alloc(16)
  t.throws(() => linux.preadDirect(patternFd, buf, 8, 9, 0), RangeError, 'past the end of the target')
  t.throws(() => linux.preadDirect(patternFd, buf, 17, 0, 0), RangeError, 'targetOffset past the target')
  t.throws(() => linux.preadDirect(patternFd, buf, -1, 1, 0), RangeError, 'negative targetOffset')
  t.throws(() => linux.preadDirect(patternFd, buf, 0, 1.5, 0), RangeError, 'fractional length')
  t.throws(() => linux.preadDirect(patternFd, buf, 0, 1, -4096), RangeError, 'negative position')
  t.throws(() => linux.preadDirect(patternFd, buf, 0, 1, 2 ** 53), RangeError, 'position above 2^53 - 1')
  t.throws(() => linux.preadDirect(patternFd, buf, 0, 1, NaN), RangeError, 'NaN position')
  t.throws(() => linux.preadDirect(patternFd, buf, 0, '1' as never, 0), TypeError, 'string length')
  t.throws(() => linux.preadDirect(patternFd, new ArrayBuffer(16) as never, 0, 1, 0), TypeError, 'not a Buffer')
  t.throws(() => linux.preadDirect(-1, buf, 0, 1, 0), RangeError, 'negative fd')
  t.throws(() => linux.preadDirect(987654, buf, 0, 1, 0), { code: 'EBADF', syscall: 'pread' }, 'closed fd')
})

// ------------------------------------------------------------------------------ freeze / thaw

t.test('freeze and thaw', async t => {
  linux.freeze(mntFd)
  try {
    t.throws(() => linux.freeze(mntFd), { code: 'EBUSY', errno: 16, message: 'FIFREEZE: Device or resource busy' },
      'a frozen filesystem cannot be frozen again')
  } finally {
    linux.thaw(mntFd)
  }
  t.throws(() => linux.thaw(mntFd), { code: 'EINVAL', errno: 22, message: 'FITHAW: Invalid argument' },
    'a second thaw fails')
  fs.writeFileSync(path.join(mnt, 'after-thaw'), 'writable again')
  t.pass('the filesystem is writable after thaw')
})

// ------------------------------------------------------------------------------ block devices

t.test('blockDeviceSize and logicalBlockSize', async t => {
  t.equal(linux.blockDeviceSize(ext4DevFd), 64 * MiB)
  t.equal(linux.logicalBlockSize(ext4DevFd), 512, 'loop devices default to 512-byte sectors')
  t.equal(linux.logicalBlockSize(patternFd), 512)
  const fd = fs.openSync(ext4Image, 'r')
  try {
    t.throws(() => linux.blockDeviceSize(fd), { code: 'ENOTTY', syscall: 'BLKGETSIZE64' }, 'a regular file')
    t.throws(() => linux.logicalBlockSize(fd), { code: 'ENOTTY', syscall: 'BLKSSZGET' })
  } finally {
    fs.closeSync(fd)
  }
})

// ------------------------------------------------------------------------------------ xattrs

t.test('listXattrs and getXattr', async t => {
  const file = path.join(mnt, 'with-xattrs')
  fs.writeFileSync(file, 'data')
  const big = Buffer.alloc(3000, 'z')
  run('setfattr', '-n', 'user.text', '-v', 'hello', file)
  run('setfattr', '-n', 'user.binary', '-v', '0x00ff0a', file)
  run('setfattr', '-n', 'user.empty', file)
  run('setfattr', '-n', 'user.big', '-v', big.toString(), file)

  const names = (f: string | Buffer) => linux.listXattrs(f).map(n => n.toString('latin1'))
  t.same(names(file).filter(n => n.startsWith('user.')).sort(),
    ['user.big', 'user.binary', 'user.empty', 'user.text'])
  t.same(linux.getXattr(file, 'user.text'), Buffer.from('hello'))
  t.same(linux.getXattr(file, 'user.binary'), Buffer.from([0x00, 0xff, 0x0a]))
  t.same(linux.getXattr(file, 'user.empty'), Buffer.alloc(0))
  t.ok(linux.getXattr(file, 'user.big').equals(big), '3000-byte value')
  t.throws(() => linux.getXattr(file, 'user.missing'), { code: 'ENODATA', syscall: 'lgetxattr' })
  t.throws(() => linux.listXattrs(path.join(mnt, 'no-such-file')), { code: 'ENOENT', syscall: 'llistxattr' })
  t.throws(() => linux.listXattrs('a\0b'), TypeError, 'NUL in a path')
  t.throws(() => linux.getXattr(file, 42 as never), TypeError)

  const plain = path.join(mnt, 'no-xattrs')
  fs.writeFileSync(plain, '')
  t.same(names(plain).filter(n => n.startsWith('user.')), [], 'a file without user attributes')

  // Names and paths are bytes: neither needs to be UTF-8.
  const latin1 = Buffer.concat([Buffer.from(mnt + '/caf'), Buffer.of(0xe9)])
  fs.writeFileSync(latin1, 'x')
  const odd = Buffer.concat([Buffer.from('user.n'), Buffer.of(0xff, 0xfe)])
  // Node passes arguments as UTF-8: the shell's printf makes the raw bytes.
  run('sh', '-c', `cd "$1" && setfattr -n "$(printf 'user.n\\377\\376')" -v v "$(printf 'caf\\351')"`, 'sh', mnt)
  t.same(linux.listXattrs(latin1).filter(n => n.subarray(0, 5).toString() === 'user.'), [odd], 'a name that is not UTF-8, exactly')
  t.same(linux.getXattr(latin1, odd), Buffer.from('v'))
  t.throws(() => linux.getXattr(latin1, Buffer.from('user.a\0b')), TypeError, 'NUL in a Buffer name')
})

t.test('xattrs on a symlink are the link\'s own, not the target\'s', async t => {
  const target = path.join(mnt, 'link-target')
  const link = path.join(mnt, 'link')
  fs.writeFileSync(target, '')
  run('setfattr', '-n', 'user.on-target', '-v', '1', target)
  fs.symlinkSync('link-target', link)
  const names = (f: string) => linux.listXattrs(f).map(n => n.toString())
  t.ok(names(target).includes('user.on-target'))
  t.notOk(names(link).includes('user.on-target'), 'llistxattr does not follow')
  t.throws(() => linux.getXattr(link, 'user.on-target'), { code: 'ENODATA' }, 'lgetxattr does not follow')
})
