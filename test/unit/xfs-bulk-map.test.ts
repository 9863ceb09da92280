// The XFS bulk mapper's C (native/export/xfs_bulk.c) called through the addon: what it refuses before
// reading anything (a directory not on XFS, a device map that is empty, one that overlaps), and on a
// small XFS with the reverse map, what it writes: entries of a skipped directory left out, every inode
// reached described once, one GETFSMAP sweep, directories the only inodes opened by handle; a file over
// 2^53 bytes refused by inode number.
import t from 'tap'
import fs, { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { runOk } from '../helpers/exec'
import { scratchDir } from '../helpers/extfs'
import { linux, type Ext4Segment } from '../../src/linux'

function mapOf(rootDir: string, body: string, device: string, segments: Ext4Segment[], skip: number[] = []) {
  const rootFd = fs.openSync(rootDir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
  const fd = fs.openSync(body, 'w')
  try {
    return linux.xfsBulkMap({ device, rootFd, root: fs.fstatSync(rootFd).ino, skip, segments, fd })
  } finally {
    fs.closeSync(fd)
    fs.closeSync(rootFd)
  }
}

t.test('refused before anything is read', async (t) => {
  const dir = await scratchDir(t, 'extfs-xfs-unit-')
  const body = path.join(dir, 'body')
  const whole: Ext4Segment[] = [{ fsOffset: 0, length: 1 << 30, disk: 0, diskOffset: 0 }]
  t.throws(() => mapOf(dir, body, '/dev/null', whole), { code: 'ERR_BULK_REFUSED', message: /XFS_IOC_FSGEOMETRY/ }, 'a directory not on XFS')
  t.throws(() => mapOf(dir, body, '/dev/null', []), { code: 'ERR_BULK_REFUSED', message: /segments/ }, 'an empty device map')
  const overlapping: Ext4Segment[] = [{ fsOffset: 0, length: 8192, disk: 0, diskOffset: 0 }, { fsOffset: 4096, length: 8192, disk: 0, diskOffset: 0 }]
  t.throws(() => mapOf(dir, body, '/dev/null', overlapping), { code: 'ERR_BULK_FAILED', message: /overlap/ }, 'an overlapping device map')
})

t.test('a frozen XFS with the reverse map', async (t) => {
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'rmapbt=1'] }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(path.join(tree, 'skipped'), { recursive: true })
    await fsp.writeFile(path.join(tree, 'skipped', 'hidden'), 'h')
    for (let i = 0; i < 50; i++) await fsp.writeFile(path.join(tree, `f${i}`), `file ${i}\n`)
    await fsp.link(path.join(tree, 'f0'), path.join(tree, 'f0-again'))
    const body = path.join(await scratchDir(t, 'extfs-xfs-unit-'), 'body')
    const size = Number((await runOk('blockdev', ['--getsize64', lfs.fsDevice])).stdout.toString().trim())
    await runOk('fsfreeze', ['-f', lfs.mountpoint])
    try {
      const r = mapOf(tree, body, lfs.fsDevice, [{ fsOffset: 0, length: size, disk: 0, diskOffset: 0 }], [fs.statSync(path.join(tree, 'skipped')).ino])
      t.match(r, { inodes: 51, dirs: 1, entries: 51, windows: 1, handleOpens: 1, byteNames: false }, 'the root and its 50 files (one of two names); skipped left out')
      t.equal(r.bodyBytes, fs.statSync(body).size, 'the body written')
      t.equal(r.samples.length, 50, 'every file\'s extent offered to the fingerprint sampler')
    } finally {
      await runOk('fsfreeze', ['-u', lfs.mountpoint])
    }
  })
})

t.test('a file over 2^53 bytes (format 2 cannot carry its size) is refused by inode number', async (t) => {
  await withLoopFs({ fs: 'xfs' }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    await runOk('truncate', ['-s', String(2 ** 53 + 2), path.join(tree, 'huge')])
    const ino = fs.statSync(path.join(tree, 'huge')).ino
    const body = path.join(await scratchDir(t, 'extfs-xfs-unit-'), 'body')
    const size = Number((await runOk('blockdev', ['--getsize64', lfs.fsDevice])).stdout.toString().trim())
    await runOk('fsfreeze', ['-f', lfs.mountpoint])
    try {
      t.throws(() => mapOf(tree, body, lfs.fsDevice, [{ fsOffset: 0, length: size, disk: 0, diskOffset: 0 }]),
        { code: 'ERR_BULK_REFUSED', message: new RegExp(`inode ${ino}: size over 2\\^53`) })
    } finally {
      await runOk('fsfreeze', ['-u', lfs.mountpoint])
    }
  })
})
