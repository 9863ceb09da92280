// Deltas applied to a mounted native view (native/view/delta.c, NativeEngine.applyDelta): a real ext4
// on a loop device is exported; a second, raw loop device holds copies of some files' bytes; deltas
// "move" files there, after the old locations were zeroed, so the bytes a read returns say which map
// served it. Then: generation, superseded reads (taint) and their clearing by a full re-read, refused
// deltas that change nothing, and four reader processes hammering a file whose map flips between two
// identical copies.
//
// The view is served by threads of this very process: reads go through child processes (dd, cat,
// sha256sum), never through synchronous fs calls.
import t from 'tap'
import { createHash } from 'node:crypto'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import pino from 'pino'
import { withLoopFs, isMounted } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'
import { run, runOk } from '../helpers/exec'
import { extfs, release, scratchDir } from '../helpers/extfs'
import { loadImage } from '../../src/mover/load'
import { NativeEngine } from '../../src/native-engine/native-engine'
import { viewAddon, type SessionHandle } from '../../src/native-engine/addon'
import { packDelta } from '../../src/native-engine/delta-tables'
import { LAYOUT } from '../../src/native-engine/tables'
import { mappedTablesOf } from '../../src/native-engine/mapped-tables'
import { tablesOfManifest } from '../../src/native-engine/v1-manifest'
import { RawDevice } from '../../src/device/reader'
import type { Extent } from '../../src/manifest/types'

const KiB = 1024
const MiB = 1024 * KiB
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const roundUp = (n: number) => Math.ceil(n / 4096) * 4096

/** The files of the image: name → content. */
const FILES: Record<string, Buffer> = {
  moved: seededBytes(11, MiB + 123), // read, then moved: tainted until re-read
  never: seededBytes(12, 64 * KiB + 5), // moved without having been read: never tainted
  flip: seededBytes(13, 4 * MiB + 4097), // hammered while its map flips
  stay: seededBytes(14, 200 * KiB), // never moved
  pushed: seededBytes(15, 8 * MiB - 1), // large enough for push-ahead (native/view/push.c): moved mid-push
}
/** Where the copies lie on the second device (byte offsets, 4 KiB aligned). */
const ON_B = { moved: 1 * MiB, never: 4 * MiB, flip1: 8 * MiB, flip2: 16 * MiB, pushed: 24 * MiB }

/** sha256 of a file in the view, read by a child process (dd: iflag=direct skips the page cache). */
async function viewSha(file: string, direct = false): Promise<string> {
  const r = await runOk('bash', ['-c', `dd if="$1" bs=1M ${direct ? 'iflag=direct' : ''} status=none | sha256sum`, 'sh', file])
  return r.stdout.split(' ')[0]!
}

t.test('deltas: atomic application, superseded reads, refusals, and a hammered flip', async (t) => {
  const state = await scratchDir(t, 'extfs-delta-')
  await withLoopFs({ fs: 'ext4', sizeMiB: 64 }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    for (const [name, bytes] of Object.entries(FILES)) await fsp.writeFile(path.join(data, name), bytes)
    const inoOf: Record<string, number> = {}
    for (const name of Object.keys(FILES)) inoOf[name] = (await fsp.stat(path.join(data, name))).ino

    // The second device: raw, file-backed, holding copies written through its backing file.
    const bImage = path.join(state, 'b.img')
    await fsp.writeFile(bImage, '')
    await fsp.truncate(bImage, 32 * MiB)
    const bFile = await fsp.open(bImage, 'r+')
    for (const [key, at] of Object.entries(ON_B)) {
      await bFile.write(FILES[key.startsWith('flip') ? 'flip' : key]!, 0, undefined, at)
    }
    await bFile.close()
    const bLoop = (await runOk('losetup', ['-f', '--show', bImage])).stdout.trim()
    t.teardown(() => run('losetup', ['-d', bLoop]))

    const manifest = path.join(state, 'm.json')
    const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    try {
      const image = loadImage(manifest, { deviceOverrides: new Map() })
      const devB = RawDevice.open('b', bLoop)
      const nDev = image.manifest.devices.length
      const extentsOf = (name: string): Extent[] => image.manifest.inodes.find((n) => n.ino === inoOf[name])!.extents!
      const toB = (name: string, at: number): Extent[] => [{ fileOffset: 0, device: nDev, deviceOffset: at, length: roundUp(FILES[name]!.length) }]

      const mnt = path.join(state, 'view')
      await fsp.mkdir(mnt)
      const logFile = path.join(state, 'view.log')
      const engine = new NativeEngine(image.manifest, image.devices, image.config,
        pino({ level: 'debug' }, pino.destination({ dest: logFile, sync: true })))
      const v = (name: string) => path.join(mnt, name)
      try {
        await engine.mount(mnt, { fsname: `extfs:${image.manifest.configId}`, allowOther: false })
        const session = (engine as unknown as { session: SessionHandle }).session

        await t.test('before any delta: generation 0, nothing tainted', async (t) => {
          t.equal(engine.generation(), 0)
          t.equal(await viewSha(v('moved')), sha(FILES.moved!), 'moved read through the page cache')
          t.equal(await viewSha(v('stay')), sha(FILES.stay!), 'stay read')
          t.same(engine.taintedFiles(), [], 'reads alone taint nothing')
          // What delta checks ask once the tables live only in C.
          t.equal(engine.fileSize(inoOf.moved!), FILES.moved!.length, 'fileSize of a regular file, from the engine')
          t.equal(engine.fileSize(image.manifest.root), undefined, 'no size for a directory')
          t.equal(engine.fileSize(987654321), undefined, 'none for an inode the image does not have')
        })

        await t.test('zeroing the old locations shows in the view (the control)', async (t) => {
          const aFile = await fsp.open(fs.image, 'r+')
          for (const name of ['moved', 'never', 'flip', 'pushed']) {
            for (const e of extentsOf(name)) {
              t.equal(e.device, 0, `${name} lies on the exported device`)
              await aFile.write(Buffer.alloc(e.length), 0, e.length, e.deviceOffset)
            }
          }
          await aFile.close()
          const zeros = sha(Buffer.alloc(FILES.moved!.length))
          t.equal(await viewSha(v('moved'), true), zeros, 'moved read with O_DIRECT: the old location, now zeros')
        })

        await t.test('a delta moves two files to the new device', async (t) => {
          engine.applyDelta([{ ino: inoOf.moved!, extents: toB('moved', ON_B.moved) }, { ino: inoOf.never!, extents: toB('never', ON_B.never) }], [devB])
          t.equal(engine.generation(), 1, 'generation 1')
          t.same(engine.taintedFiles(), ['/moved'], 'the file read before the delta is tainted, by path')
          t.equal(await viewSha(v('never'), true), sha(FILES.never!), 'never: its bytes from the new device')
          t.same(engine.taintedFiles(), ['/moved'], 'a file first read after the delta is not tainted')
          t.equal(await viewSha(v('moved')), sha(FILES.moved!), 'moved, through the page cache: the cached old pages were dropped')
          t.same(engine.taintedFiles(), [], 'a full re-read under the new map clears the taint')
          t.equal(await viewSha(v('stay')), sha(FILES.stay!), 'stay unchanged')
          const log = (await fsp.readFile(logFile, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>)
          t.match(log.find((l) => l.msg === 'delta applied'), { generation: 1, files: 2, devices: ['b'] }, 'logged')
        })

        await t.test('a shard view follows a delta as a whole view does', async (t) => {
          // A second view of the same image, shard of 2 holding `never` (docs/shards.md), mounted
          // under the manifest's map: `never`'s old location is zeroed, its bytes are on device b.
          const tables = mappedTablesOf(image.manifest) ?? tablesOfManifest(image.manifest)
          const shardOf = viewAddon().shardPlan(tables.handle, 2).shardOf
          const index = shardOf[tables.index(inoOf.never!)]!
          const other = Object.keys(FILES).find((name) => shardOf[tables.index(inoOf[name]!)] !== index)
          const shardMnt = path.join(state, 'shard')
          await fsp.mkdir(shardMnt)
          const shard = new NativeEngine(image.manifest, image.devices, image.config, pino({ level: 'silent' }))
          const shardB = RawDevice.open('b', bLoop)
          await shard.mount(shardMnt, { fsname: `extfs:${image.manifest.configId}`, allowOther: false, shard: { index, count: 2 } })
          try {
            const sv = (name: string) => path.join(shardMnt, name)
            t.equal(await viewSha(sv('never'), true), sha(Buffer.alloc(FILES.never!.length)), 'never, under the manifest\'s map: the zeroed old location')
            if (other) t.equal((await run('cat', [sv(other)])).code, 1, `${other}, of the other shard: not there`)
            shard.applyDelta([{ ino: inoOf.never!, extents: toB('never', ON_B.never) }], [shardB])
            t.same(shard.taintedFiles(), ['/never'], 'read before the delta: tainted')
            t.equal(await viewSha(sv('never'), true), sha(FILES.never!), 'after it: the bytes from the new device')
            t.same(shard.taintedFiles(), [], 're-read in full: clear')
          } finally {
            await shard.unmount()
            shardB.close()
          }
        })

        await t.test('a partial re-read does not clear a taint; a second delta taints again', async (t) => {
          engine.applyDelta([{ ino: inoOf.moved!, extents: toB('moved', ON_B.moved) }], [])
          t.equal(engine.generation(), 2)
          t.same(engine.taintedFiles(), ['/moved'], 'read under generation 1, replaced at 2')
          await runOk('dd', [`if=${v('moved')}`, 'of=/dev/null', 'bs=64k', 'count=4', 'iflag=direct', 'status=none'])
          t.same(engine.taintedFiles(), ['/moved'], '256 KiB of 1 MiB re-read: still tainted')
          t.equal(await viewSha(v('moved'), true), sha(FILES.moved!))
          t.same(engine.taintedFiles(), [], 'the rest re-read too: clear')
        })

        await t.test('a delta while a push is under way: what follows reads the new map, never the old location', async (t) => {
          // The old location holds zeros (the control above), the new one the file's bytes. A 64 KiB
          // read starts a push of the other 8 MiB from the old location; the delta lands during it.
          // A store of old bytes that landed after the delta dropped the pages would read as zeros.
          const want = sha(FILES.pushed!)
          for (let round = 1; round <= 10; round++) {
            if (round > 1) {
              // Back to the old location. The file was served, so that taints it, and a tainted file
              // is not pushed: a full read under this map clears the taint, then its pages are dropped.
              engine.applyDelta([{ ino: inoOf.pushed!, extents: extentsOf('pushed') }], [])
              t.equal(await viewSha(v('pushed'), true), sha(Buffer.alloc(FILES.pushed!.length)), `round ${round}: back on the zeroed old location`)
              await runOk('dd', [`if=${v('pushed')}`, 'iflag=nocache', 'count=0', 'status=none'])
            }
            t.notOk(engine.taintedFiles().includes('/pushed'), `round ${round}: not tainted, so a read starts a push`)
            const h = await fsp.open(v('pushed'), 'r')
            try {
              await h.read(Buffer.alloc(64 * KiB), 0, 64 * KiB, 0)
              engine.applyDelta([{ ino: inoOf.pushed!, extents: toB('pushed', ON_B.pushed) }], [])
              t.equal(await viewSha(v('pushed')), want, `round ${round}: through the page cache, the new map's bytes`)
            } finally {
              await h.close()
            }
          }
        })

        await t.test('bad deltas are refused with clear errors and change nothing', async (t) => {
          const addon = viewAddon()
          const generation = engine.generation()
          const good = () => packDelta([{ index: 0, extents: [] }], [])
          const nInodes = image.manifest.inodes.length
          const movedIndex = (engine as unknown as { paths: { index(ino: number): number } }).paths.index(inoOf.moved!)
          const setU32 = (b: Buffer, s: 'delta_header' | 'delta_file', field: string, value: number, at = 0) => {
            b.writeUInt32LE(value, at + (LAYOUT[s].fields as Record<string, { offset: number }>)[field]!.offset)
            return b
          }
          const setU64 = (b: Buffer, s: 'delta_header' | 'extent', field: string, value: bigint, at = 0) => {
            b.writeBigUInt64LE(value, at + (LAYOUT[s].fields as Record<string, { offset: number }>)[field]!.offset)
            return b
          }
          const fileDelta = (extents: Extent[]) => packDelta([{ index: movedIndex, extents }], [])
          const filesOff = LAYOUT.delta_header.size
          const extentsAt = (b: Buffer) => Number(b.readBigUInt64LE(LAYOUT.delta_header.fields.extents_off.offset))
          const cases: [string, Buffer, number[], RegExp][] = [
            ['bad magic', setU32(good(), 'delta_header', 'magic', 0x12345678), [], /bad delta: not a delta \(bad magic\)/],
            ['other version', setU32(good(), 'delta_header', 'version', 1), [], /delta version 1, expected 3/],
            ['truncated', good().subarray(0, 88), [], /delta size 96, buffer holds 88/],
            ['section past the end', setU64(good(), 'delta_header', 'extents_off', 1n << 40n), [], /section extents out of bounds/],
            ['misaligned section', setU64(good(), 'delta_header', 'files_off', 60n), [], /section files out of bounds/],
            ['fds and devices disagree', good(), [devB.fd], /0 new devices but 1 device fds/],
            ['fd not open', packDelta([], [MiB]), [987654], /device fd 0 \(new device 2\) is not an open file descriptor/],
            ['index out of range', setU32(good(), 'delta_file', 'index', nInodes, filesOff), [], new RegExp(`inode index ${nInodes} out of range \\(${nInodes} inodes\\)`)],
            ['a directory', good(), [], /inode index 0 is not a regular file/],
            ['files unsorted', setU32(packDelta([{ index: movedIndex, extents: [] }, { index: movedIndex + 1, extents: [] }], []), 'delta_file', 'index', movedIndex, filesOff + 16),
              [], /file 1: inode index \d+ not after \d+ \(files must be sorted, each once\)/],
            ['overlapping extents', fileDelta([{ fileOffset: 0, device: 1, deviceOffset: 0, length: 8192 }, { fileOffset: 4096, device: 1, deviceOffset: 65536, length: 4096 }]),
              [], /file 0: extent 1 starts at 4096, before the previous one ends/],
            ['unsorted extents', fileDelta([{ fileOffset: 8192, device: 1, deviceOffset: 0, length: 4096 }, { fileOffset: 0, device: 1, deviceOffset: 65536, length: 4096 }]),
              [], /extent 1 starts at 0, before the previous one ends/],
            ['empty extent', fileDelta([{ fileOffset: 0, device: 1, deviceOffset: 0, length: 0 }]), [], /file 0: extent 0 is empty/],
            ['device out of range', fileDelta([{ fileOffset: 0, device: 2, deviceOffset: 0, length: 4096 }]), [], /extent 0: device 2 out of range \(2 devices\)/],
            ['64-bit overflow', (() => { const b = fileDelta([{ fileOffset: 0, device: 1, deviceOffset: 0, length: 4096 }]); return setU64(b, 'extent', 'device_offset', 0xffff_ffff_ffff_f000n, extentsAt(b)) })(),
              [], /extent 0 overflows 64 bits/],
            ['extents of no file', setU32(fileDelta([{ fileOffset: 0, device: 1, deviceOffset: 0, length: 4096 }]), 'delta_file', 'count', 0, filesOff), [], /1 of 1 extents belong to no file/],
          ]
          for (const [what, buf, fds, message] of cases) {
            t.throws(() => addon.applyDelta(session, buf, fds), message, what)
          }
          t.throws(() => engine.applyDelta([{ ino: inoOf.moved!, inline: 'aGVsbG8=' }], []), /inode \d+: replacing a file's content by inline data is not supported/, 'inline: refused in JS')
          t.throws(() => engine.applyDelta([{ ino: 999999, extents: [] }], []), /inode 999999 is not in the image/)
          t.equal(engine.generation(), generation, 'generation unchanged')
          t.same(engine.taintedFiles(), [], 'nothing tainted')
          t.equal(await viewSha(v('moved'), true), sha(FILES.moved!), 'moved still served from its last map')
        })

        await t.test('a retired device (no fd): a read through it fails, it never reads another device', async (t) => {
          const gone = RawDevice.retired('gone')
          t.equal(gone.fd, -1, 'no fd')
          // A map that lies: `never` on the retired device. Only a forged delta could say this.
          engine.applyDelta([{ ino: inoOf.never!, extents: [{ ...toB('never', ON_B.never)[0]!, device: nDev + 1 }] }], [gone])
          const r = await run('dd', [`if=${v('never')}`, 'of=/dev/null', 'bs=1M', 'iflag=direct', 'status=none'])
          t.not(r.code, 0, 'the read fails')
          t.match(r.stderr, /Input\/output error/, 'with EIO')
          // Events reach the log from the JS thread, a moment after the failed request.
          const logged = async () => (await fsp.readFile(logFile, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>)
            .some((l) => l.msg === 'read failed' && l.device === 'gone' && String(l.err).includes('retired'))
          let seen = false
          for (let i = 0; i < 40 && !(seen = await logged()); i++) await new Promise((r) => setTimeout(r, 50))
          t.ok(seen, 'the log names the device and says it is retired')
          engine.applyDelta([{ ino: inoOf.never!, extents: toB('never', ON_B.never) }], [])
          t.equal(await viewSha(v('never'), true), sha(FILES.never!), 'served again once the map says where it is')
          t.same(engine.taintedFiles(), [], 'a failed read taints nothing')
        })

        await t.test('4 readers hammering a file while its map flips between two identical copies', async (t) => {
          engine.applyDelta([{ ino: inoOf.flip!, extents: toB('flip', ON_B.flip1) }], [])
          const want = sha(FILES.flip!)
          const stop = path.join(state, 'stop')
          // Two readers with O_DIRECT (every byte through the engine), two through the page cache (dropped
          // by every delta). Each prints one sha256 per read.
          const readers = [['iflag=direct', 'bs=1M'], ['iflag=direct', 'bs=128k'], ['bs=1M'], ['bs=4k']].map((args) =>
            runOk('bash', ['-c', `while [ ! -e "$2" ]; do dd if="$1" ${args.join(' ')} status=none | sha256sum; done`, 'sh', v('flip'), stop], { timeoutMs: 120_000 }))
          const g0 = engine.generation()
          const until = Date.now() + 6000
          let flips = 0
          while (Date.now() < until) {
            engine.applyDelta([{ ino: inoOf.flip!, extents: toB('flip', flips % 2 === 0 ? ON_B.flip2 : ON_B.flip1) }], [])
            flips++
            await new Promise((r) => setTimeout(r, 2))
          }
          await fsp.writeFile(stop, '')
          const outputs = (await Promise.all(readers)).map((r) => r.stdout.trim().split('\n').map((l) => l.split(' ')[0]))
          t.equal(engine.generation(), g0 + flips, `generation +1 per delta (${flips} deltas)`)
          outputs.forEach((shas, k) => {
            t.ok(shas.length >= 3, `reader ${k}: ${shas.length} whole reads`)
            t.same(shas.filter((s) => s !== want), [], `reader ${k}: every read returned the file's bytes`)
          })
          // Once more with the readers stopped: their last reads may have been whole under the last map.
          engine.applyDelta([{ ino: inoOf.flip!, extents: toB('flip', ON_B.flip1) }], [])
          t.same(engine.taintedFiles(), ['/flip'], 'flip, read under superseded maps, is tainted')
          t.equal(await viewSha(v('flip'), true), want)
          t.same(engine.taintedFiles(), [], 'a full re-read clears it')
        })
      } finally {
        const tainted = engine.taintedFiles()
        for (let i = 0; i < 10; i++) {
          try {
            await engine.unmount()
            break
          } catch {
            await new Promise((r) => setTimeout(r, 300))
          }
        }
        if (isMounted(mnt)) {
          await run('umount', ['-l', mnt])
          await engine.unmount()
        }
        t.same(engine.taintedFiles(), tainted, 'after unmount: the list as of unmount')
        devB.close()
        for (const d of image.devices) d.close()
      }
      t.notOk(isMounted(mnt), 'unmounted')
    } finally {
      await release(manifest) // thaws the source before withLoopFs unmounts it
    }
  })
})
