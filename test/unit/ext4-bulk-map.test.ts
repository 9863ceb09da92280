// The ext4 bulk mapper's C (native/export/ext4.c) called through the addon on a small frozen ext4,
// its body assembled and read back by the reference v2 reader: what it writes (shortest varints,
// the device cursor, byte names, skipped inodes, a segmented device map) and what it refuses
// (a filesystem that is not frozen: its journal still needs recovery).
import t from 'tap'
import fs, { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { runOk } from '../helpers/exec'
import { scratchDir } from '../helpers/extfs'
import { linux, type Ext4Segment } from '../../src/linux'
import { assembleV2 } from '../../src/manifest/v2/write'
import { readWholeV2 } from '../../src/manifest/v2/whole'
import { getVarint } from '../../src/manifest/v2/varint'
import type { ManifestHeader } from '../../src/manifest/types'

function header(root: number, features: string[], size: number): ManifestHeader {
  return {
    format: 'extfs-manifest', version: 1, features, configId: 'unit-test-0001', createdAt: new Date().toISOString(),
    source: { host: 'unit', paths: ['/t'] }, frozenImage: { kind: 'freeze', mountpoint: '/t', fsType: 'ext4' }, configRecord: 'r',
    blockSize: 4096, devices: [{ id: 'd0', size, identity: {}, fingerprints: [] }, { id: 'd1', size, identity: {}, fingerprints: [] }], root,
  }
}

t.test('a frozen ext4 read by the bulk mapper, its body read back', async (t) => {
  const dir = await scratchDir(t, 'extfs-ext4-unit-')
  await withLoopFs({ fs: 'ext4', sizeMiB: 64 }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(path.join(tree, 'skipped'), { recursive: true })
    await fsp.writeFile(path.join(tree, 'skipped', 'hidden'), 'h')
    await fsp.writeFile(path.join(tree, 'café'), 'x') // written as UTF-8 é
    await runOk('python3', ['-c', 'import os,sys; open(os.path.join(sys.argv[1].encode(), b"raw\\xff"), "wb").write(b"y" * 9000)', tree])
    const size = linux.blockDeviceSize(fs.openSync(lfs.fsDevice, 'r'))
    const rawFd = fs.openSync(Buffer.concat([Buffer.from(tree + '/raw'), Buffer.of(0xff)]), 'r')
    const [first] = linux.fiemap(rawFd) // before the freeze: FIEMAP_FLAG_SYNC would wait for the thaw
    fs.closeSync(rawFd)
    // Two pieces on two "disks" (the same loop device under two indices), cut one block into the
    // 9000-byte file: its one extent on the device becomes two in the manifest.
    const half = first!.physical + 4096
    const segments: Ext4Segment[] = [{ fsOffset: 0, length: half, disk: 0, diskOffset: 0 }, { fsOffset: half, length: size - half, disk: 1, diskOffset: half }]
    const root = fs.statSync(tree).ino
    const skip = [fs.statSync(path.join(tree, 'skipped')).ino]
    const body = path.join(dir, 'body')
    const map = () => {
      const fd = fs.openSync(body, 'w')
      try {
        return linux.ext4BulkMap({ device: lfs.fsDevice, root, skip, segments, carryMax: 65536, fd })
      } finally {
        fs.closeSync(fd)
      }
    }

    // Mounted read-write and not frozen, the superblock says the journal needs recovery: refused.
    t.throws(map, { code: 'ERR_BULK_REFUSED', message: /journal needs recovery/ }, 'an unfrozen filesystem is refused')

    await runOk('fsfreeze', ['-f', lfs.mountpoint])
    let r
    try {
      r = map()
    } finally {
      await runOk('fsfreeze', ['-u', lfs.mountpoint])
    }
    t.match(r, { inodes: 3, dirs: 1, entries: 2, byteNames: true, inlineData: false }, 'counts and features')
    t.ok(r.directIo, 'read with O_DIRECT')
    t.equal(fs.statSync(body).size, r.bodyBytes)

    const raw = fs.readFileSync(body)
    // Every varint in the body is in its shortest form: the reader refuses others, so reading it all checks it.
    t.throws(() => getVarint(Buffer.from([0x80, 0x00]), 0, 2), /shortest form/, 'the reader refuses a long form (so reading the body checks ours)')
    const out = path.join(dir, 'm.v2')
    assembleV2(out, header(root, ['byte-names'], size), body, r)
    const m = readWholeV2(out)
    const byName = new Map(m.inodes.find((n) => n.ino === root)!.entries!.map((e) => [e.name, e.ino]))
    t.same([...byName.keys()].sort(), ['café', 'raw\udcff'], 'names as bytes; the skipped directory left out')
    const rawFile = m.inodes.find((n) => n.ino === byName.get('raw\udcff'))!
    t.equal(rawFile.size, 9000)
    t.same(rawFile.extents, [
      { fileOffset: 0, device: 0, deviceOffset: first!.physical, length: 4096 },
      { fileOffset: 4096, device: 1, deviceOffset: half, length: 8192 },
    ], 'cut where the device map cuts')
    t.equal(raw[0], 0x44, 'DIR records first')
    t.equal(r.samples.length, 3, 'a sample per extent while there are few')
  })
})
