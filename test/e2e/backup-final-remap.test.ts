// `extfs backup http://…` is checked against relocations up to its end. serve runs with `--interval 0`:
// it remaps only when asked, so the one remap that can report a relocation is the one `extfs backup`
// asks for once its command exited. The command reads every file of the image (tar), then moves the
// blocks of some of them on the initiator (xfs_fsr on the image's reflink clones; the owner then
// overwrites the old places) and exits 0. A real XFS on a loop device, serve and the mover on loopback.
//  - nothing moved: exit 0, the tar byte-exact;
//  - the final remap refused (500: another remap holds the image's lock): exit 7 naming it;
//  - serve killed before the end: exit 7 naming the final remap as failed;
//  - relocated at the end: exit 7, the moved files named, and only those;
//  - then a new backup of the remapped image: its view is proved with the delta's fingerprints (the
//    manifest's sample the moved blocks, now overwritten) and follows the chain: exit 0, byte-exact.
import t, { type Test } from 'tap'
import { existsSync, promises as fsp, readFileSync, readdirSync } from 'node:fs'
import * as path from 'node:path'
import { run, runOk, type RunResult } from '../helpers/exec'
import { EXTFS, ensureUnmounted, extfs, release, scratchDir, startServe, type Served } from '../helpers/extfs'
import { sleep, withLoopFs } from '../helpers/loopfs'
import { seededBytes, writeInterleaved } from '../helpers/populate'
import { diffTrees, snapshotTree, type Tree } from '../helpers/tree'
import { overwrittenOldExtents, rootFiles } from '../helpers/moved'

const KiB = 1024
/** Fragmented (written interleaved), so that xfs_fsr has something to gather. */
const MOVED = ['moved-0', 'moved-1']
const KEPT = ['kept-0']
const BIG_SIZE = 1024 * KiB
const SMALL = ['small-0', 'small-1', 'small-2']
/** Times to the nanosecond; the root's own times are the view's, not the image's. */
const TREE = { timePrecisionNs: 1, rootTimes: false }
/** Where views by URL mirror serve's answers, one directory per view process (src/mover/remote.ts). */
const MIRRORS = '/run/extfs/remote'

/** The files `extfs backup` named as read under a superseded map, by name, sorted; undefined when none. */
function taintedNamed(stderr: string): string[] | undefined {
  const line = /^extfs: \d+ file\(s\) were read under a superseded map and not read again: (.*)$/m.exec(stderr)
  return line?.[1]!.split(', ').map((p) => p.replace(/^\//, '')).sort()
}

/** The lines `extfs backup` wrote itself. */
const extfsLines = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('extfs: '))

t.test('extfs backup of a served image asks for one remap at its end', async (top) => {
  const t = top // `top` where a subtest's teardown would stop a serve too early
  const scratch = await scratchDir(t, 'extfs-final-remap-')
  const keyFile = path.join(scratch, 'key')
  await fsp.writeFile(keyFile, seededBytes(515, 32).toString('hex'))
  const tmp = path.join(scratch, 'tmp') // TMPDIR of extfs backup: its private mountpoint lands here
  await fsp.mkdir(tmp)
  const mirrorsBefore = new Set(existsSync(MIRRORS) ? readdirSync(MIRRORS) : [])

  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await writeInterleaved([...MOVED, ...KEPT].map((n, i) => ({ file: path.join(data, n), seed: 600 + i })), BIG_SIZE / (64 * KiB), 64 * KiB)
    for (const [i, n] of SMALL.entries()) await fsp.writeFile(path.join(data, n), seededBytes(700 + i, 12 * KiB + i))
    await runOk('sync', ['-f', data])
    const manifest = path.join(scratch, 'nightly.json')
    const db = path.join(scratch, 'serve.db')
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot', '--key', keyFile])
      t.equal(exp.code, 0, `export: ${exp.stderr.trim()}`)
      // Nothing writes between the clone set and this snapshot: it is the image.
      const image = await snapshotTree(data, TREE)
      const contents = new Map(await Promise.all(MOVED.map(async (n) => [n, await fsp.readFile(path.join(data, n))] as [string, Buffer])))
      const m = JSON.parse(readFileSync(manifest, 'utf8'))
      t.equal(m.frozenImage.mechanism, 'clone-set', 'a reflink clone set')
      const files = rootFiles(m)
      t.ok(MOVED.every((n) => files.get(n).extents.length > 1), 'the files to move are fragmented')
      // The image's clones are named by the original's inode number (src/frozen/clone-set.ts).
      const clone = (name: string) => path.join(m.frozenImage.imagePath, String(files.get(name).ino))

      let served: Served = await startServe(t, ['--key', keyFile, '--state', db, '--interval', '0', manifest])
      const url = () => `${served.url}/nightly`

      /** `extfs backup` of the served image with `sh -c "<tar of the view> && <after>"`. */
      const backup = async (name: string, after: string): Promise<{ r: RunResult; tar: string }> => {
        const tar = path.join(scratch, `${name}.tar`)
        const log = path.join(scratch, `${name}.log`)
        const script = `tar --format=posix -cpf ${tar} . && ${after}`
        const r = await run(EXTFS, ['backup', url(), '--key', keyFile, '--log-file', log, '--', 'sh', '-c', script], {
          timeoutMs: 180_000, env: { ...process.env, TMPDIR: tmp },
        })
        return { r, tar }
      }
      /** What every backup leaves behind: nothing. */
      const nothingLeft = async (t: Test) => {
        t.same(await fsp.readdir(tmp), [], 'no private mountpoint left')
        t.same(readdirSync('/run/extfs').filter((n) => n.endsWith('.report.json')), [], 'no view report left in /run/extfs')
        t.same((existsSync(MIRRORS) ? readdirSync(MIRRORS) : []).filter((n) => !mirrorsBefore.has(n)), [], 'no mirror of serve\'s answers left')
      }
      /** The tar the command wrote, unpacked, equals the image. */
      const tarIsExact = async (t: Test, tar: string) => {
        const out = path.join(scratch, `${path.basename(tar)}.d`)
        await fsp.mkdir(out)
        await runOk('tar', ['-C', out, '-xpf', tar])
        t.same(diffTrees(image, await snapshotTree(out, TREE)), [], 'the tar of the view equals the image')
      }
      const remapLogged = () => served.stderr().split('\n').filter((l) => l.includes('"msg":"remap"')).map((l) => JSON.parse(l))

      await t.test('nothing moved: exit 0, one remap asked for at the end, found nothing', async (t) => {
        const { r, tar } = await backup('unmoved', 'true')
        t.equal(r.code, 0, `extfs backup exits 0: ${r.stderr.trim()}`)
        t.same(extfsLines(r.stderr), [], 'and says nothing')
        t.match(remapLogged(), [{ state: 'unchanged' }], 'serve remapped once, on the backup\'s request, and found nothing moved')
        await tarIsExact(t, tar)
        await nothingLeft(t)
      })

      await t.test('the final remap refused by serve (another remap holds the image): exit 7 naming it', async (t) => {
        // A live process's pid in the lock (src/remap/remap.ts): serve's remap refuses, POST answers 500.
        const lock = `${manifest}.remap-lock`
        await fsp.writeFile(lock, `${process.pid}\n`)
        try {
          const { r } = await backup('locked', 'true')
          t.equal(r.code, 7, `extfs backup exits 7: ${r.stderr.trim()}`)
          t.match(extfsLines(r.stderr), [/^extfs: the backup cannot be checked against relocations up to its end: the final remap failed \(.*500 remap failed: another remap of this image is running/],
            'one line: the final remap failed, and serve\'s reason')
        } finally {
          await fsp.rm(lock, { force: true })
        }
        await nothingLeft(t)
      })

      await t.test('serve killed before the command exits: exit 7 naming the final remap', async (t) => {
        const { r, tar } = await backup('killed', `kill -KILL ${served.child.pid}`)
        const end = await Promise.race([served.exited, sleep(5000).then(() => 'still running')])
        t.match(end, { signal: 'SIGKILL' }, 'serve was killed by the command')
        t.equal(r.code, 7, `extfs backup exits 7: ${r.stderr.trim()}`)
        t.match(extfsLines(r.stderr), [/^extfs: the backup cannot be checked against relocations up to its end: the final remap failed \(http:\/\/127\.0\.0\.1:\d+\/images\/nightly\/remap: (ECONNREFUSED|ECONNRESET)\)$/],
          'one line: the final remap failed, and why')
        await tarIsExact(t, tar) // the lease was fresh: every read was served
        await nothingLeft(t)
        served = await startServe(top, ['--key', keyFile, '--state', db, '--interval', '0', manifest])
        const again = await backup('after-restart', 'true')
        t.equal(again.r.code, 0, `with serve back, a backup exits 0 again: ${again.r.stderr.trim()}`)
        await nothingLeft(t)
      })
      await t.test('blocks of files already read move before the command exits: exit 7 naming them', async (t) => {
        // xfs_fsr gathers each clone into new blocks; the old ones are then the original's alone, and the
        // owner's in-place writes land on them.
        const move = MOVED.map((n) => `xfs_fsr ${clone(n)} && ` +
          `dd if=/dev/urandom of=${path.join(data, n)} bs=64K count=${BIG_SIZE / (64 * KiB)} conv=notrunc,fsync status=none`).join(' && ')
        const { r, tar } = await backup('moved', move)
        t.equal(r.code, 7, `extfs backup exits 7 (stale) although its command exited 0 (${r.code}): ${r.stderr.trim()}`)
        t.same(taintedNamed(r.stderr), MOVED, `it names the moved files, and only those: ${JSON.stringify(extfsLines(r.stderr))}`)
        t.equal(extfsLines(r.stderr).length, 1, 'in one line')
        t.match(remapLogged().at(-1), { state: 'remapped' }, 'the remap asked for at the end published the move')
        t.ok((await overwrittenOldExtents(manifest, contents)) > 0, 'the image\'s old locations now hold other bytes: the move was real')
        await tarIsExact(t, tar) // read before the move: right, but extfs backup cannot tell
        await nothingLeft(t)
      })
      await t.test('a new backup after the move: proved on the delta, follows it, exact', async (t) => {
        const { r, tar } = await backup('after-move', 'true')
        t.equal(r.code, 0, `extfs backup exits 0: ${r.stderr.trim()}`)
        await tarIsExact(t, tar)
        await nothingLeft(t)
      })

      await served.stop()
    } finally {
      // A backup killed by its timeout leaves its view behind (it runs detached): unmount it first.
      for (const name of await fsp.readdir(tmp)) await ensureUnmounted(path.join(tmp, name))
      await release(manifest)
    }
  })
})
