// What serve keeps between remaps of an image (src/remap/cache.ts) never hides a move, a new manifest or
// a changed tree, on real loop filesystems: xfs_fsr of reflink clones after cached remaps (through a
// ConfigServer in this process with the real remapper, as `extfs serve` runs it), the manifest exported
// again under the same name, and a frozen ext4 image whose files were renamed or removed behind a kept
// path table.
import t from 'tap'
import { promises as fsp, readFileSync, statSync } from 'node:fs'
import * as path from 'node:path'
import pino from 'pino'
import { withLoopFs } from '../helpers/loopfs'
import { runOk } from '../helpers/exec'
import { seededBytes, writeInterleaved } from '../helpers/populate'
import { extfs, release, scratchDir } from '../helpers/extfs'
import { ConfigServer } from '../../src/service/server'
import { ServeState } from '../../src/service/state'
import { ConfigClient } from '../../src/service/client'
import { remapImage } from '../../src/remap/remap'
import { RemapCache } from '../../src/remap/cache'
import { ExportError } from '../../src/errors'

const KiB = 1024
const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'))
const deltaInos = (file: string) => readJson(file).files.map((f: { ino: number }) => f.ino)

t.test('serve\'s cached remaps of an XFS clone set: every xfs_fsr is found, a re-export is a new image', async (t) => {
  const dir = await scratchDir(t, 'extfs-remap-cache-')
  const keyFile = path.join(dir, 'key')
  await fsp.writeFile(keyFile, seededBytes(41, 32).toString('hex'))
  const key = readFileSync(keyFile)
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    for (let i = 0; i < 50; i++) await fsp.writeFile(path.join(data, `small-${i}`), seededBytes(i + 1, 8 * KiB))
    const big = [0, 1, 2].map((i) => ({ file: path.join(data, `big-${i}`), seed: 600 + i }))
    await writeInterleaved(big, 48, 64 * KiB)
    await runOk('sync', ['-f', data])
    const bigIno = big.map((b) => statSync(b.file).ino)
    const manifest = path.join(dir, 'clones.json')
    const exportImage = async () => {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot', '--key', keyFile])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      return readJson(manifest)
    }
    /** Defragments the clone of big file `i`: its blocks move, the source file keeps its own. */
    const moveClone = (m: { frozenImage: { imagePath: string } }, i: number) => runOk('xfs_fsr', ['-v', path.join(m.frozenImage.imagePath, String(bigIno[i]))])

    const state = new ServeState(path.join(dir, 'serve.db'))
    let server: ConfigServer | undefined
    let client: ConfigClient | undefined
    try {
      const m0 = await exportImage()
      server = new ConfigServer({ manifests: [manifest], key, state, log: pino({ level: 'silent' }), intervalMs: 0 })
      const addr = await server.listen('127.0.0.1', 0)
      client = new ConfigClient(`http://127.0.0.1:${addr.port}/clones`, key)
      t.match(await client.remap(), { state: 'unchanged', configId: m0.configId, seq: 0 }, 'first remap: nothing moved (the cache is filled)')

      await moveClone(m0, 0)
      const r1 = await client.remap()
      t.match(r1, { state: 'remapped', seq: 1 }, 'xfs_fsr after a cached remap is found')
      t.same(deltaInos(`${manifest}.delta-1`), [bigIno[0]], 'delta 1 holds the file moved')

      await moveClone(m0, 1)
      const r2 = await client.remap()
      t.match(r2, { state: 'remapped', seq: 2 }, 'a second move, after the cached map took delta 1, is found')
      t.same(deltaInos(`${manifest}.delta-2`), [bigIno[1]], 'delta 2 holds only the file moved since delta 1')
      t.equal(readJson(`${manifest}.delta-2`).from, r1.configId, 'and continues the chain')

      const fresh = await extfs(['remap', manifest, '--key', keyFile])
      t.equal(fresh.stdout, `unchanged ${r2.configId}\n`, `extfs remap, reading everything, agrees: ${fresh.stderr}`)

      // Exported again under the same name: another image with its own config ID and chain.
      await release(manifest)
      t.match(await client.remap(), { state: 'released' }, 'released')
      const m1 = await exportImage()
      t.not(m1.configId, m0.configId, 'a new config ID')
      t.match(await client.remap(), { state: 'unchanged', configId: m1.configId, seq: 0 }, 'the new manifest is remapped, not the one kept')
      await moveClone(m1, 2)
      const r3 = await client.remap()
      t.match(r3, { state: 'remapped', seq: 1 }, 'a move in the new image is found')
      t.match(readJson(`${manifest}.delta-1`), { image: m1.configId, from: m1.configId, seq: 1 }, 'delta 1 of the new chain')
      t.same(deltaInos(`${manifest}.delta-1`), [bigIno[2]], 'holding the file moved')
    } finally {
      client?.close()
      await server?.close()
      state.close()
      await release(manifest)
    }
  })
})

t.test('a kept path table of a frozen ext4 image: a path gone or naming another inode makes one walk', async (t) => {
  const dir = await scratchDir(t, 'extfs-remap-cache-')
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(path.join(data, 'sub'), { recursive: true })
    for (let i = 0; i < 6; i++) await fsp.writeFile(path.join(data, i % 2 ? 'sub' : '', `f-${i}`), seededBytes(70 + i, 12 * KiB * (i + 1)))
    const ino = (name: string) => statSync(path.join(data, name)).ino
    const [renamed, replaced, removed] = [ino('f-0'), ino('sub/f-1'), ino('f-2')]
    const manifest = path.join(dir, 'frozen.json')
    /** Writes to a frozen filesystem block: thaw, change the tree, freeze again (release thaws). */
    const changeTree = async (change: () => Promise<void>) => {
      await runOk('fsfreeze', ['-u', fs.mountpoint])
      await change()
      await runOk('sync', ['-f', data])
      await runOk('fsfreeze', ['-f', fs.mountpoint])
    }
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze', '--mapper', 'vfs']) // reads the v1 JSON
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const c0 = readJson(manifest).configId
      const cache = new RemapCache()
      const remap = () => remapImage(manifest, { warn: () => {}, cache })
      t.match(remap(), { state: 'unchanged', configId: c0 }, 'first remap walks the tree')
      t.equal(cache.files()?.paths.get(renamed), path.join(data, 'f-0'), 'and keeps the path table (a frozen image)')

      await changeTree(async () => {
        // Another inode of the same size under the old name: only the inode tells them apart.
        await fsp.rename(path.join(data, 'sub', 'f-1'), path.join(data, 'f-1-elsewhere'))
        await fsp.writeFile(path.join(data, 'sub', 'f-1'), seededBytes(99, statSync(path.join(data, 'f-1-elsewhere')).size))
      })
      t.match(remap(), { state: 'unchanged', configId: c0 }, 'a kept path names another inode: walked again, nothing moved')
      t.equal(cache.files()?.paths.get(replaced), path.join(data, 'f-1-elsewhere'), 'the file is found under its new name, the other inode not used')

      await changeTree(() => fsp.rename(path.join(data, 'f-0'), path.join(data, 'sub', 'f-0-renamed')))
      t.match(remap(), { state: 'unchanged', configId: c0 }, 'a kept path is gone: walked again, nothing moved')
      t.equal(cache.files()?.paths.get(renamed), path.join(data, 'sub', 'f-0-renamed'), 'a renamed file is found under its new name')

      await changeTree(() => fsp.rm(path.join(data, 'f-2')))
      t.throws(remap, new ExportError(`inode ${removed}: not found in the image any more`), 'a file gone from the tree after the walk again: the remap fails as without a cache')
    } finally {
      await release(manifest)
    }
  })
})
