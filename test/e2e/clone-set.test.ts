// cloneInto (src/frozen/clone-set.ts), the clone set's per-file step, on a real XFS with reflink: a
// file is cloned and described (metadata from the original, size and allocation from the clone); a
// name that no longer names the inode the walk met (deleted and recreated, or now a FIFO, whose open
// must not wait for a writer) gives undefined and leaves no clone behind.
// Needs root, loop devices, xfsprogs.
import t from 'tap'
import fs, { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { runOk } from '../helpers/exec'
import { cloneInto } from '../../src/frozen/clone-set'

t.test('XFS reflink: clone, and names that changed since the walk met them', async (t) => {
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (lfs) => {
    const images = path.join(lfs.mountpoint, 'images')
    await fsp.mkdir(images)
    const open = cloneInto(images)
    const file = path.join(lfs.mountpoint, 'file')
    await fsp.writeFile(file, 'x'.repeat(5000))
    const met = fs.lstatSync(file, { bigint: true })

    const d = open(file, met)
    t.ok(d, 'cloned')
    t.equal(d!.meta.ino, met.ino, 'metadata from the original')
    t.equal(d!.data.size, 5000n, 'size from the clone')
    t.not(d!.data.ino, met.ino, 'the clone is its own inode')
    d!.close()
    t.same(await fsp.readdir(images), [String(met.ino)], 'named by the source inode number')
    await fsp.rm(path.join(images, String(met.ino)))

    await fsp.rm(file)
    await fsp.writeFile(file, 'recreated')
    t.equal(open(file, met), undefined, 'a name now naming another inode: undefined')
    t.same(await fsp.readdir(images), [], 'and no clone of it left')

    const fifo = path.join(lfs.mountpoint, 'fifo')
    await fsp.writeFile(fifo, 'soon a FIFO')
    const fifoMet = fs.lstatSync(fifo, { bigint: true })
    await fsp.rm(fifo)
    await runOk('mkfifo', [fifo])
    t.equal(open(fifo, fifoMet), undefined, 'a name now a FIFO: undefined, without waiting for a writer')
    t.same(await fsp.readdir(images), [], 'and no clone of it left')
  })
})
