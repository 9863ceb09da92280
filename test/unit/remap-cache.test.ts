// What a bulk remap keeps of an image (src/remap/cache.ts currentChain): the header and a partial map
// of the files the delta chain names, looked up in the manifest as it streams; never every file.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { RemapCache } from '../../src/remap/cache'
import { writeManifestV2 } from '../../src/manifest/v2/write'
import { writeDeltaFile } from '../../src/delta/io'
import { signDelta } from '../../src/delta/sign'
import { ImageMap } from '../../src/delta/chain'
import { readRecord, writeRecord } from '../../src/configid/record'
import type { Delta } from '../../src/delta/types'
import type { Manifest } from '../../src/manifest/types'
import { extent, makeDevice, makeInode, makeManifest } from '../helpers/manifest-factory'

const KEY = Buffer.from('0123456789abcdef0123456789abcdef')

/** The factory's manifest plus regular files 5..104 under the root. */
function manifest(): Manifest {
  const m = makeManifest()
  for (let ino = 5; ino < 105; ino++) {
    m.inodes[0]!.entries!.push({ name: `f${ino}`, ino })
    m.inodes.push(makeInode(ino, 'file', { size: 5000, blocks: 16, extents: [extent(0, 0, ino * 8192, 8192)] }))
  }
  m.inodes.sort((a, b) => a.ino - b.ino)
  return m
}

function delta(files: Delta['files']): Delta {
  return signDelta({
    format: 'extfs-delta', version: 1, image: 'cfg-0001-abcdef', seq: 1, from: 'cfg-0001-abcdef', to: 'cfg-0002-abcdef',
    createdAt: '2024-05-02T12:00:00.000Z', reason: 'extents moved', devices: [makeDevice('d1', 2 * 1024 * 1024, { hint: '/dev/vdc' })], files,
  }, KEY)
}

function image(dir: string, files: Delta['files']): { file: string; record: string } {
  const m = manifest()
  const { inodes, ...header } = m
  const file = path.join(dir, 'm.extfs')
  writeManifestV2(file, header, inodes, KEY)
  const d = delta(files)
  const deltaFile = path.join(dir, 'm.extfs.delta-1')
  // Written unchecked when the delta is meant to be refused: the reader must refuse it, not the writer.
  try {
    writeDeltaFile(deltaFile, d, ImageMap.ofManifest(m).context())
  } catch {
    fs.writeFileSync(deltaFile, JSON.stringify(d))
  }
  const record = path.join(dir, 'm.extfs.config-id')
  writeRecord(record, 'cfg-0002-abcdef', 'current', { deltas: ['m.extfs.delta-1'] })
  return { file, record }
}

t.test('the partial map holds the deltas\' files only, at their places after the chain', async (t) => {
  const dir = t.testdir({})
  const moved = [{ ino: 7, extents: [extent(0, 1, 0, 8192)] }, { ino: 60, extents: [extent(0, 0, 4096, 8192)] }]
  const { file, record } = image(dir, moved)
  const cache = new RemapCache()
  t.equal(cache.manifest(file, KEY).header.configId, 'cfg-0001-abcdef')
  const chain = cache.currentChain(file, record, readRecord(record), KEY)
  t.equal(chain.seq, 1)
  t.equal(chain.configId, 'cfg-0002-abcdef')
  t.equal(chain.devices.length, 2, 'the delta\'s new device')
  t.same([...chain.files.keys()].sort((a, b) => a - b), [7, 60], 'only the files the delta names')
  t.same(chain.files.get(7), { size: 5000, extents: moved[0]!.extents })
  t.ok(cache.approxBytes() < 2000, `${cache.approxBytes()} bytes kept for a 100-file image`)
  t.equal(cache.currentChain(file, record, readRecord(record), KEY), chain, 'kept: nothing read again')
})

t.test('a delta naming what is no regular file of the manifest is refused', async (t) => {
  const dir = t.testdir({})
  const { file, record } = image(dir, [{ ino: 1, extents: [] }])
  const cache = new RemapCache()
  cache.manifest(file, KEY)
  t.throws(() => cache.currentChain(file, record, readRecord(record), KEY), /inode 1 is not a regular file of the image/)
  const absent = image(t.testdir({}), [{ ino: 4242, extents: [] }])
  const other = new RemapCache()
  other.manifest(absent.file, KEY)
  t.throws(() => other.currentChain(absent.file, absent.record, readRecord(absent.record), KEY), /inode 4242 is not a regular file of the image/)
})
