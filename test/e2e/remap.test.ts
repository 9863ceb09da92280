// `extfs remap` after real relocations on loop devices: xfs_fsr of reflink clones, btrfs balance of a
// read-only snapshot, btrfs replace of a member by a spare (the old member wiped afterwards). Each time
// the new map (manifest ⊕ deltas) is read raw from the devices, O_DIRECT, and compared with the files.
import t, { type Test } from 'tap'
import { existsSync, promises as fsp, readFileSync, statSync, writeFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import * as path from 'node:path'
import { remountReadOnly, withLoopFs } from '../helpers/loopfs'
import { busiestDevice, withBtrfs, withBtrfsAndSpare } from '../helpers/btrfs'
import { runOk } from '../helpers/exec'
import { seededBytes, writeInterleaved } from '../helpers/populate'
import { extfs, release, REMAPPED, scratchDir } from '../helpers/extfs'
import { RawDevice } from '../../src/device/reader'
import { readChain } from '../../src/delta/io'
import type { ImageMap } from '../../src/delta/chain'
import { readRecord, recordPath } from '../../src/configid/record'
import { readManifestFile } from '../../src/manifest/io'
import { jsonResult } from '../helpers/json-results'

const KiB = 1024
const MiB = 1024 * KiB
const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'))

/** The current map of the image behind `manifest`, read the way a mover would. */
function currentMap(manifest: string, key?: Buffer): ImageMap {
  const m = readManifestFile(manifest)
  const record = recordPath(manifest, m.configRecord)
  return readChain(m, record, readRecord(record), key)
}

/** A file's bytes as the map places them, read raw (O_DIRECT) from the devices' initiator paths. */
function readThroughMap(map: ImageMap, ino: number, devices: Map<number, RawDevice>): Buffer {
  const loc = map.files.get(ino)!
  if (loc.inline !== undefined) return Buffer.from(loc.inline, 'base64')
  const out = Buffer.alloc(loc.size)
  for (const e of loc.extents ?? []) {
    const length = Math.min(e.length, loc.size - e.fileOffset)
    let dev = devices.get(e.device)
    if (!dev) {
      dev = RawDevice.open(map.devices[e.device]!.id, map.devices[e.device]!.hint!)
      devices.set(e.device, dev)
    }
    dev.readExact(out, e.fileOffset, length, e.deviceOffset)
  }
  return out
}

/** Every expected file (by ino) read through the current map equals its content. */
function checkRaw(t: Test, map: ImageMap, expected: Map<number, Buffer>, what: string): void {
  const devices = new Map<number, RawDevice>()
  try {
    const wrong = [...expected].filter(([ino, content]) => !readThroughMap(map, ino, devices).equals(content)).map(([ino]) => ino)
    t.same(wrong, [], `${what}: every file read raw through the new map equals its content (${expected.size} files)`)
  } finally {
    for (const d of devices.values()) d.close()
  }
}

async function fileContent(file: string): Promise<Buffer> {
  return fsp.readFile(file)
}

/** ino → content of every regular file directly in `dir` (as on the source, which nobody writes here). */
async function contentsByIno(dir: string): Promise<Map<number, Buffer>> {
  const out = new Map<number, Buffer>()
  for (const name of await fsp.readdir(dir)) {
    const st = await fsp.lstat(path.join(dir, name))
    if (st.isFile()) out.set(st.ino, await fileContent(path.join(dir, name)))
  }
  return out
}

t.test('XFS clone set: unchanged, xfs_fsr of three clones, released', async (t) => {
  const state = await scratchDir(t)
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    for (let i = 0; i < 200; i++) await fsp.writeFile(path.join(data, `small-${i}`), seededBytes(i + 1, 8 * KiB))
    const big = [0, 1, 2].map((i) => ({ file: path.join(data, `big-${i}`), seed: 500 + i }))
    await writeInterleaved(big, 48, 64 * KiB)
    await runOk('sync', ['-f', data])
    const expected = await contentsByIno(data)
    const manifest = path.join(state, 'xfs.json')
    try {
      const exported = jsonResult(t, await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot', '--json']), 'extfs.export/1', 'export')
      const m = readJson(manifest)
      t.equal(m.frozenImage.mechanism, 'clone-set')
      t.same(exported.frozenImage, { kind: 'snapshot', mountpoint: fs.mountpoint, fsType: 'xfs', mechanism: 'clone-set', imagePath: m.frozenImage.imagePath }, 'export --json names the clone set')
      t.equal(exported.configId, m.configId)
      const record = `${manifest}.config-id`
      t.match(readJson(record), { mapping: { throughLoop: false, carryMax: 65536 } }, 'export keeps its mapping options in the record')

      // a. Nothing moved: nothing written.
      const recordBefore = readFileSync(record, 'utf8')
      const same = jsonResult(t, await extfs(['remap', manifest, '--json']), 'extfs.remap/1', 'remap')
      t.match(same, { state: 'unchanged', configId: m.configId, mapper: 'vfs', manifestBytes: statSync(manifest).size })
      t.notOk('from' in same || 'delta' in same, 'no delta fields when unchanged')
      t.notOk(existsSync(`${manifest}.delta-1`), 'no delta file')
      t.equal(readFileSync(record, 'utf8'), recordBefore, 'record untouched')

      // c. xfs_fsr defragments reflinked clones too: their blocks move (the originals keep theirs).
      const bigInos = big.map((b) => statSync(b.file).ino).sort((a, b) => a - b)
      for (const ino of bigInos) {
        const clone = path.join(m.frozenImage.imagePath, String(ino))
        await runOk('xfs_fsr', ['-v', clone])
      }
      const moved = jsonResult(t, await extfs(['remap', manifest, '--json']), 'extfs.remap/1', 'remap')
      const delta = readJson(`${manifest}.delta-1`)
      t.match(moved, {
        state: 'remapped', configId: delta.to, from: m.configId, to: delta.to, delta: `${manifest}.delta-1`, seq: 1, files: delta.files.length, newDevices: 0, retiredDevices: 0,
      }, 'remap --json names the delta it wrote')
      t.same(delta.files.map((f: { ino: number }) => f.ino), bigInos, 'the delta holds exactly the three defragmented files')
      t.match(delta, { format: 'extfs-delta', version: 1, image: m.configId, seq: 1, from: m.configId, devices: [] })
      t.equal(delta.files.every((f: { extents: unknown[] }) => f.extents.length === 1), true, 'each now one extent')
      const before = bigInos.map((ino) => m.inodes.find((n: { ino: number }) => n.ino === ino).extents.length)
      t.ok(before.every((n) => n > 1), `they were fragmented: ${before.join(', ')} extents`)
      t.match(readJson(record), { configId: delta.to, state: 'current', deltas: [path.basename(manifest) + '.delta-1'], mapping: { throughLoop: false } })
      const deltaBytes = statSync(`${manifest}.delta-1`).size
      const manifestBytes = statSync(manifest).size
      t.equal(moved.deltaBytes, deltaBytes)
      t.equal(moved.manifestBytes, manifestBytes)
      t.comment(`xfs_fsr of 3 of 203 files: delta ${deltaBytes} bytes vs manifest ${manifestBytes} bytes (${(100 * deltaBytes / manifestBytes).toFixed(1)}%)`)
      checkRaw(t, currentMap(manifest), expected, 'after xfs_fsr')

      const again = await extfs(['remap', manifest])
      t.equal(again.stdout, `unchanged ${delta.to}\n`, 'the chain is read back: nothing moved since')
      const verified = jsonResult(t, await extfs(['verify', manifest, '--json']), 'extfs.verify/1', 'verify')
      t.match(verified, { configId: delta.to, manifestConfigId: m.configId, devices: [{ id: 'd0', path: fs.fsDevice }] }, 'verify --json: current under the delta\'s config ID')

      // e. Released: exit 7, nothing written.
      const rel = jsonResult(t, await extfs(['release', manifest, '--json']), 'extfs.release/1', 'release')
      t.same(rel, {
        schema: 'extfs.release/1', manifest, configId: delta.to, manifestConfigId: m.configId, fromJournal: false,
        frozenImage: { kind: 'snapshot', mountpoint: fs.mountpoint }, removed: m.frozenImage.imagePath,
      }, 'release --json: the config ID the record reached is released, the clone set removed')
      const released = readFileSync(record, 'utf8')
      const r = await extfs(['remap', manifest, '--json'])
      t.equal(r.code, 7, 'Stale')
      t.match(r.stderr, /^extfs: frozen image \S+ was released: nothing to remap\n$/)
      t.equal(r.stdout, '', 'nothing on stdout, also with --json')
      t.notOk(existsSync(`${manifest}.delta-2`), 'no delta written')
      t.equal(readFileSync(record, 'utf8'), released, 'record untouched')
    } finally {
      await release(manifest)
    }
  })
})

t.test('btrfs balance of a read-only snapshot (signed)', async (t) => {
  const state = await scratchDir(t)
  const key = path.join(state, 'key')
  await fsp.writeFile(key, 'remap-test-key-0123456789abcdef')
  const keyBytes = readFileSync(key)
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await runOk('btrfs', ['subvolume', 'create', data])
    for (let i = 0; i < 4; i++) await fsp.writeFile(path.join(data, `big-${i}`), seededBytes(700 + i, (i + 1) * MiB + 123))
    for (let i = 0; i < 20; i++) await fsp.writeFile(path.join(data, `small-${i}`), seededBytes(800 + i, 16 * KiB))
    await runOk('sync', ['-f', data])
    const expected = await contentsByIno(data)
    const manifest = path.join(state, 'btrfs.json')
    try {
      const exp = await extfs(['export', data, '--mapper', 'vfs', '--output', manifest, '--frozen-image', 'snapshot', '--key', key])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const m = readJson(manifest)
      t.equal(m.frozenImage.mechanism, 'btrfs-snapshot')
      const same = await extfs(['remap', manifest, '--key', key])
      t.equal(same.stdout, `unchanged ${m.configId}\n`, `nothing moved yet: ${same.stderr}`)

      await runOk('btrfs', ['balance', 'start', '-d', '--full-balance', fs.mountpoint], { timeoutMs: 120_000 })
      const moved = await extfs(['remap', manifest, '--key', key])
      t.equal(moved.code, 0, `remap: ${moved.stderr}`)
      t.match(moved.stdout, REMAPPED)
      const delta = readJson(`${manifest}.delta-1`)
      t.match(delta.signature, { alg: 'hmac-sha256', value: /^[0-9a-f]{64}$/ }, 'signed with --key')
      t.same(delta.files.map((f: { ino: number }) => f.ino).sort((a: number, b: number) => a - b), [...expected.keys()].sort((a, b) => a - b),
        'balance relocated every data chunk: every file moved')
      t.comment(`btrfs balance -d: ${delta.files.length} files moved, delta ${statSync(`${manifest}.delta-1`).size} bytes vs manifest ${statSync(manifest).size} bytes`)
      checkRaw(t, currentMap(manifest, keyBytes), expected, 'after balance')

      const unsigned = await extfs(['remap', manifest])
      t.equal(unsigned.stdout, `unchanged ${delta.to}\n`, 'without --key the chain is read unchecked')
    } finally {
      await release(manifest)
    }
  })
})

t.test('btrfs replace of a member by a spare; the old member wiped', async (t) => {
  const state = await scratchDir(t)
  const sizeMiB = 160
  await withBtrfsAndSpare({ members: 2, data: 'single', metadata: 'raid1', sizeMiB }, async (fs, spare) => {
    const data = path.join(fs.mountpoint, 'data')
    await runOk('btrfs', ['subvolume', 'create', data])
    for (let i = 0; i < 6; i++) await fsp.writeFile(path.join(data, `f-${i}`), seededBytes(900 + i, 3 * MiB + 17 * i))
    await runOk('sync', ['-f', data])
    const expected = await contentsByIno(data)
    const manifest = path.join(state, 'replace.json')
    try {
      const exp = await extfs(['export', data, '--mapper', 'vfs', '--output', manifest, '--frozen-image', 'snapshot'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const m = readJson(manifest)
      const oldIndex = busiestDevice(m)
      const old = m.devices[oldIndex].hint as string
      t.ok(fs.loopDevices.includes(old), `the replaced member ${old} is one of ours`)

      await runOk('btrfs', ['replace', 'start', '-B', '-f', old, spare, fs.mountpoint], { timeoutMs: 120_000 })
      const moved = await extfs(['remap', manifest])
      t.equal(moved.code, 0, `remap: ${moved.stderr}`)
      t.match(moved.stdout, REMAPPED)
      const delta = readJson(`${manifest}.delta-1`)
      t.equal(delta.devices.length, 1, 'one new device')
      t.equal(delta.devices[0].hint, spare, 'the spare')
      t.equal(delta.devices[0].id, `d${m.devices.length}`)
      t.ok(delta.devices[0].fingerprints.length > 0, 'fingerprinted')
      const onOld = m.inodes.filter((n: { extents?: { device: number }[] }) => n.extents?.some((e) => e.device === oldIndex)).map((n: { ino: number }) => n.ino)
      t.same(delta.files.map((f: { ino: number }) => f.ino), onOld, 'exactly the files that had extents on the replaced member')
      t.notOk(delta.files.some((f: { extents: { device: number }[] }) => f.extents.some((e) => e.device === oldIndex)), 'nothing left on the old member')
      t.comment(`btrfs replace: ${delta.files.length} of ${expected.size} files moved; old identity ${JSON.stringify(m.devices[oldIndex].identity)}, new ${JSON.stringify(delta.devices[0].identity)}`)

      // The old member is no longer in the filesystem: wipe it, then the new map must still read true.
      await runOk('dd', ['if=/dev/zero', `of=${old}`, 'bs=1M', `count=${sizeMiB}`, 'oflag=direct', 'status=none'], { timeoutMs: 120_000 })
      checkRaw(t, currentMap(manifest), expected, 'after replace and wipe')
    } finally {
      await release(manifest)
    }
  })
})

t.test('ext4 image of kind none: the exported files are walked again; nothing moved', async (t) => {
  const state = await scratchDir(t)
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(path.join(data, 'sub'), { recursive: true })
    for (let i = 0; i < 10; i++) await fsp.writeFile(path.join(data, i % 2 ? 'sub' : '', `f-${i}`), seededBytes(950 + i, 20 * KiB * (i + 1)))
    await fsp.link(path.join(data, 'f-0'), path.join(data, 'sub', 'hard'))
    await remountReadOnly(fs)
    const manifest = path.join(state, 'none.json')
    const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'none'])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    const r = await extfs(['remap', manifest])
    t.equal(r.code, 0, `remap: ${r.stderr}`)
    t.equal(r.stdout, `unchanged ${readJson(manifest).configId}\n`)
    t.notOk(existsSync(`${manifest}.delta-1`))

    // One remap at a time: a lock held by a live process refuses, one left by a dead process is taken over.
    const lock = `${manifest}.remap-lock`
    writeFileSync(lock, `${process.pid}\n`)
    const busy = await extfs(['remap', manifest])
    t.equal(busy.code, 8, 'a remap while another runs exits 8')
    t.match(busy.stderr, new RegExp(`^extfs: another remap of this image is running \\(pid ${process.pid}, `), `and says so: ${busy.stderr.trim()}`)
    t.ok(existsSync(lock), 'the other\'s lock is left alone')
    const dead = spawnSync('true').pid
    writeFileSync(lock, `${dead}\n`)
    const taken = await extfs(['remap', manifest])
    t.equal(taken.code, 0, `a lock whose owner died is taken over: ${taken.stderr}`)
    t.notOk(existsSync(lock), 'and removed after the remap')
    await release(manifest)
  })
})
