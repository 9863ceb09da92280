// The native engine (src/native-engine/, native/view/) through the kernel: export a frozen image of a real
// loop filesystem, mount it with NativeEngine in this process, and back it up with tar, rsync and dd,
// compared with the source to the nanosecond. Then the edges: xattr ERANGE, EROFS, a busy unmount,
// EIO from a device read that comes up short, misaligned device offsets, an unmount from outside,
// the process exiting by itself after unmount, and ESTALE (logged) once the image is released. The XFS
// scenario and push-ahead have their own files (native-engine-xfs, push-ahead).
//
// The view is served by threads of this very process, so the test never makes synchronous calls
// that open files in the view: an open may need the JS thread to judge the config-ID record.
import t from 'tap'
import { createHash } from 'node:crypto'
import { promises as fsp, readFileSync } from 'node:fs'
import * as path from 'node:path'
import { isMounted } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'
import { snapshotTree, diffTrees } from '../helpers/tree'
import { tarRoundTrip, rsyncCopy, ddCompare, ddSha256 } from '../helpers/backup-tools'
import { run, runOk } from '../helpers/exec'
import { extfs, release } from '../helpers/extfs'
import { loadImage } from '../../src/mover/load'
import type { Manifest } from '../../src/manifest/types'
import { NS, isSocket, mountNative, exportPopulated, type Mounted } from '../helpers/native-mount'

const ESTALE = -116 // Node has no name for it
const EIO = -5
const DIST = path.resolve(__dirname, '..', '..', 'dist')

/** errno of a failing promise (0 when it resolves). */
const errnoOf = (p: Promise<unknown>): Promise<number> => p.then(() => 0, (e: NodeJS.ErrnoException) => e.errno ?? -1)

const logLines = (file: string): Record<string, unknown>[] =>
  readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>)

/** getxattr/listxattr with a given buffer size through libc, as tar does: [return value, errno]. */
async function xattrProbe(file: string, name: string | null, size: number): Promise<[number, number]> {
  const py = `import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(max(int(sys.argv[3]), 1))
p, n, size = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3])
r = libc.lgetxattr(p, n, buf if size else None, size) if n else libc.llistxattr(p, buf if size else None, size)
print(r, ctypes.get_errno() if r < 0 else 0)`
  const r = await runOk('python3', ['-c', py, file, name ?? '', String(size)])
  const [ret, errno] = r.stdout.trim().split(' ').map(Number)
  return [ret!, errno!]
}

t.test('native engine on ext4: backups to the nanosecond, and the edges', async (t) => {
  await exportPopulated(t, { fs: 'ext4' }, async (data, manifest, state) => {
    const source = await snapshotTree(data, { timePrecisionNs: NS })
    const logFile = path.join(state, 'view.log')
    const image = loadImage(manifest, { deviceOverrides: new Map() })
    let view: Mounted | undefined
    try {
      view = await mountNative(state, 'view', image, logFile)
      const v = view.mnt
      t.ok(isMounted(v), 'mounted')
      t.equal((await fsp.stat(v)).ino, image.manifest.root, 'the root answers with the image root inode')
      t.match(readFileSync('/proc/self/mountinfo', 'utf8'), new RegExp(` ${v} ro,.* - fuse\\.extfs extfs:${image.manifest.configId} .*default_permissions`), 'ro, fuse.extfs, fsname, default_permissions')

      await t.test('the view equals the source, times to the nanosecond', async (t) => {
        t.same(diffTrees(source, await snapshotTree(v, { timePrecisionNs: NS })), [])
        const st = await fsp.stat(path.join(v, 'regular/f4097'), { bigint: true })
        const src = await fsp.stat(path.join(data, 'regular/f4097'), { bigint: true })
        t.equal(st.atimeNs, src.atimeNs, 'atime ns')
        t.equal(st.ctimeNs, src.ctimeNs, 'ctime ns (as exported)')
        t.equal(st.blocks, src.blocks, 'st_blocks')
        t.equal(st.blksize, 4096n, 'st_blksize = manifest blockSize')
        t.equal(st.ino, src.ino, 'st_ino = manifest ino')
      })

      await t.test('tar, rsync and dd of the view equal the source', async (t) => {
        const tarOut = path.join(state, 'tar')
        await tarRoundTrip(v, tarOut) // --xattrs: the 2000-byte user.big goes through tar's ERANGE retry
        t.same(diffTrees(source, await snapshotTree(tarOut, { timePrecisionNs: NS }), { ignorePaths: isSocket(source) }), [], 'tar (skips sockets)')
        const rsyncOut = path.join(state, 'rsync')
        await rsyncCopy(v, rsyncOut)
        t.same(diffTrees(source, await snapshotTree(rsyncOut, { timePrecisionNs: NS })), [], 'rsync -aHAX')
        for (const rel of ['regular/f0', 'regular/f1', 'regular/f4095', 'regular/f4096', 'regular/f4097', 'regular/f1048579', 'sparse/holes',
          'frag/one', 'frag/two', 'prealloc/unwritten', 'prealloc/partial', 'prealloc/keepsize', 'big-64MiB']) {
          for (const bs of [65536, 1 << 20, 4097]) {
            const r = await ddCompare(path.join(data, rel), path.join(v, rel), { bs })
            t.ok(r.equal, `dd bs=${bs} of ${rel} (${r.bytesA} bytes)`)
          }
        }
        const big = await ddCompare(path.join(data, 'big-64MiB'), path.join(v, 'big-64MiB'), { bs: 1 << 20, iflag: ['direct'] })
        t.ok(big.equal, 'dd iflag=direct of the 64 MiB file (reads straight through, no page cache)')
      })

      await t.test('hard links, listing, statfs', async (t) => {
        const names = ['links/a/one', 'links/b/two', 'links/b/c/three']
        const inos = await Promise.all(names.map(async (n) => (await fsp.lstat(path.join(v, n))).ino))
        t.equal(new Set(inos).size, 1, 'three names, one inode')
        t.equal((await fsp.lstat(path.join(v, names[0]!))).nlink, 3)
        const ls = await runOk('ls', ['-f', path.join(v, 'many')])
        t.equal(ls.stdout.split('\n').filter(Boolean).length, 3002, 'all 3000 entries plus . and .. over many readdir requests')
        const findView = await runOk('find', [v])
        const findSrc = await runOk('find', [data])
        t.equal(findView.stdout.split('\n').length, findSrc.stdout.split('\n').length, 'find sees as many entries')
        const sf = await fsp.statfs(v)
        // The model: the image's sizes as exported, nothing free; st_blocks counts 512-byte units.
        const inodes = image.manifest.inodes
        const blocks512 = inodes.reduce((sum, i) => sum + i.blocks, 0)
        const want = { bsize: image.manifest.blockSize, blocks: Math.ceil((blocks512 * 512) / image.manifest.blockSize), files: inodes.length }
        t.match(sf, { bsize: want.bsize, blocks: want.blocks, bfree: 0, bavail: 0, files: want.files, ffree: 0 }, 'statfs figures')
      })

      await t.test('xattrs: size probe, ERANGE, ENODATA', async (t) => {
        const f = path.join(v, 'meta/xattr-file')
        t.same(await xattrProbe(f, 'user.big', 0), [2000, 0], 'size 0 returns the size')
        t.same(await xattrProbe(f, 'user.big', 100), [-1, 34], 'too small a buffer: ERANGE')
        t.same(await xattrProbe(f, 'user.big', 2000), [2000, 0], 'exactly large enough')
        t.same(await xattrProbe(f, 'user.nope', 100), [-1, 61], 'missing: ENODATA')
        t.same(await xattrProbe(f, 'user.empty', 0), [0, 0], 'an empty value')
        const [listSize] = await xattrProbe(f, null, 0)
        t.ok(listSize > 0, 'listxattr size probe')
        t.same(await xattrProbe(f, null, 3), [-1, 34], 'listxattr too small: ERANGE')
        const vals = await runOk('getfattr', ['-n', 'user.big', '-e', 'hex', f])
        t.match(vals.stdout, `user.big=0x${seededBytes(6001, 2000).toString('hex')}\n`, 'the value, byte-exact')
      })

      await t.test('read-only: every mutation is EROFS', async (t) => {
        const EROFS = -30
        const f = path.join(v, 'regular/f4096')
        t.equal(await errnoOf(fsp.writeFile(path.join(v, 'new'), 'x')), EROFS, 'create')
        t.equal(await errnoOf(fsp.open(f, 'r+')), EROFS, 'open for writing')
        t.equal(await errnoOf(fsp.truncate(f, 0)), EROFS, 'truncate')
        t.equal(await errnoOf(fsp.mkdir(path.join(v, 'd'))), EROFS, 'mkdir')
        t.equal(await errnoOf(fsp.unlink(f)), EROFS, 'unlink')
        t.equal(await errnoOf(fsp.rename(f, path.join(v, 'moved'))), EROFS, 'rename')
        t.equal(await errnoOf(fsp.link(f, path.join(v, 'l2'))), EROFS, 'link')
        t.equal(await errnoOf(fsp.symlink('x', path.join(v, 's2'))), EROFS, 'symlink')
        t.equal(await errnoOf(fsp.chmod(f, 0o600)), EROFS, 'chmod')
        t.equal(await errnoOf(fsp.utimes(f, 1, 1)), EROFS, 'utimes')
        const setx = await run('setfattr', ['-n', 'user.x', '-v', '1', f])
        t.match(setx.stderr, /Read-only file system/, 'setxattr')
      })

      await t.test('device offsets off alignment, and a device that reads short', async (t) => {
        // An edited copy of the manifest served by a second mount: f1048579 shifted 1000 bytes on the
        // device (every read takes the bounce path), f4096 pointing at the very end of the device,
        // f4095 carried inline.
        const m = JSON.parse(JSON.stringify(image.manifest)) as Manifest
        const byPath = (rel: string) => {
          let ino = m.root
          for (const part of rel.split('/')) ino = m.inodes.find((i) => i.ino === ino)!.entries!.find((e) => e.name === part)!.ino
          return m.inodes.find((i) => i.ino === ino)!
        }
        const shifted = byPath('regular/f1048579')
        for (const e of shifted.extents!) e.deviceOffset += 1000
        const pastEnd = byPath('regular/f4096')
        pastEnd.extents = [{ fileOffset: 0, device: 0, deviceOffset: image.devices[0]!.size, length: 4096 }]
        // The manifest says the device is a block longer than it is (the packer refuses extents past a
        // device's end): the device then reads short there.
        m.devices[0]!.size += 4096
        const inline = byPath('regular/f4095')
        const inlineContent = seededBytes(77, 3000)
        delete inline.extents
        inline.inline = inlineContent.toString('base64')
        inline.size = inlineContent.length
        m.features = ['inline-data']

        const expected = Buffer.alloc(shifted.size)
        for (const e of shifted.extents!) {
          const len = Math.min(e.length, shifted.size - e.fileOffset)
          image.devices[e.device]!.readExact(expected, e.fileOffset, len, e.deviceOffset)
        }
        const edited = await mountNative(state, 'edited', image, logFile, m)
        try {
          const got = await fsp.readFile(path.join(edited.mnt, 'regular/f1048579'))
          t.ok(got.equals(expected), 'unaligned device offsets read byte-exact (bounce buffer)')
          const odd = await ddSha256(path.join(edited.mnt, 'regular/f1048579'), { bs: 3333, skip: 7 })
          t.equal(odd.sha256, createHash('sha256').update(expected.subarray(7 * 3333)).digest('hex'), 'and with odd-sized reads at odd offsets')
          t.ok((await fsp.readFile(path.join(edited.mnt, 'regular/f4095'))).equals(inlineContent), 'inline content')
          const tail = await ddSha256(path.join(edited.mnt, 'regular/f4095'), { bs: 1000, skip: 2 })
          t.equal(tail.bytes, 1000, 'inline: a read at an offset, clipped at EOF')
          t.equal(await errnoOf(fsp.readFile(path.join(edited.mnt, 'regular/f4096'))), EIO, 'a short device read is EIO, never zeros')
          const failed = logLines(logFile).filter((l) => l.msg === 'read failed')
          t.ok(failed.length > 0, 'logged')
          t.match(failed[0], { level: 50, op: 'read', ino: pastEnd.ino, offset: 0, device: 'd0', deviceOffset: image.devices[0]!.size, err: /short read/ })
        } finally {
          // Unmounted from outside (plain umount): unmount() then just ends the session.
          await run('umount', [edited.mnt])
          t.notOk(isMounted(edited.mnt), 'unmounted from outside')
          await edited.engine.unmount()
          t.pass('unmount() resolves for a view unmounted from outside')
          await edited.close()
        }
      })

      await t.test('busy: unmount refuses and the view keeps serving', async (t) => {
        const h = await fsp.open(path.join(v, 'regular/f4097'), 'r')
        try {
          await t.rejects(view!.engine.unmount(), /busy/, 'rejects with "busy"')
          t.ok(isMounted(v), 'still mounted')
          const { bytesRead } = await h.read(Buffer.alloc(4097), 0, 4097, 0)
          t.equal(bytesRead, 4097, 'still serving')
        } finally {
          await h.close()
        }
      })

      await t.test('a process that unmounts exits by itself', async (t) => {
        const mnt = path.join(state, 'child')
        await fsp.mkdir(mnt)
        const script = `
          const { loadImage } = require(${JSON.stringify(path.join(DIST, 'mover/load.js'))})
          const { NativeEngine } = require(${JSON.stringify(path.join(DIST, 'native-engine/native-engine.js'))})
          const pino = require(${JSON.stringify(require.resolve('pino'))})
          const [manifest, mnt] = process.argv.slice(1)
          const image = loadImage(manifest, { deviceOverrides: new Map() })
          const engine = new NativeEngine(image.manifest, image.devices, image.config, pino({ level: 'silent' }))
          engine.mount(mnt, { fsname: 'extfs:child', allowOther: false })
            .then(() => require('fs').promises.readFile(mnt + '/regular/f4097'))
            .then((b) => engine.unmount().then(() => console.log('read', b.length)))
            .then(() => image.devices.forEach((d) => d.close()))`
        const r = await run(process.execPath, ['-e', script, manifest, mnt], { timeoutMs: 60_000 })
        t.notOk(r.timedOut, 'exited without being killed')
        t.equal(r.code, 0, r.stderr)
        t.equal(r.stdout.trim(), 'read 4097')
        t.notOk(isMounted(mnt), 'and left nothing mounted')
        if (isMounted(mnt)) await run('umount', ['-l', mnt])
      })

      await t.test('released: opens are ESTALE and logged; an expired lease refuses reads of open files', async (t) => {
        const h = await fsp.open(path.join(v, 'regular/f4097'), 'r')
        const unread = await fsp.open(path.join(v, 'regular/f4096'), 'r') // opened before the release, read only after
        // Earlier tests read it: drop its cached pages, or the kernel would answer without asking the view.
        await runOk('dd', [`if=${path.join(v, 'regular/f4096')}`, 'iflag=nocache', 'count=0', 'status=none'])
        try {
          const r = await extfs(['release', manifest])
          t.equal(r.code, 0, `release: ${r.stderr}`)
          t.equal(await errnoOf(fsp.readFile(path.join(v, 'regular/f4096'))), ESTALE, 'a new open is refused')
          t.equal(await errnoOf(fsp.readFile(path.join(v, 'links/b/two'))), ESTALE, 'every time')
          const { bytesRead } = await h.read(Buffer.alloc(100), 0, 100, 0)
          t.equal(bytesRead, 100, 'without a lease, the engine alone serves reads of open files (serve.ts expires it on a release)')
          t.ok((await fsp.lstat(path.join(v, 'regular/f4096'))).isFile(), 'metadata still answers')
          const refused = logLines(logFile).filter((l) => l.msg === 'open refused: frozen image not current')
          t.match(refused.find((l) => l.path === '/regular/f4096'), { level: 40, op: 'open', ino: Number, reason: /released/ })
          // Opened through links/b/two; logged by the one path the tables keep for the file, which of
          // its three names that is depends on the loader (JS packs breadth first, C by inode order).
          const names = ['/links/a/one', '/links/b/two', '/links/b/c/three']
          t.match(refused.find((l) => names.includes(String(l.path))), { op: 'open' }, 'a hard link logs one of its paths')

          view!.engine.setLease(0) // what serve.ts does when it sees the release: every read asks the config check
          t.equal(await errnoOf(unread.read(Buffer.alloc(100), 0, 100, 0)), ESTALE, 'a read of a file opened before is refused (ESTALE)')
          const reads = logLines(logFile).filter((l) => l.msg === 'read refused: frozen image not current')
          t.match(reads.find((l) => l.path === '/regular/f4096'), { level: 40, op: 'read', offset: 0, reason: /released/ }, 'and logged with the reason')
          view!.engine.setLease(-1)
          t.equal(await errnoOf(unread.read(Buffer.alloc(100), 0, 100, 0)), 0, 'with no lease again, reads are served')
        } finally {
          await h.close()
          await unread.close()
        }
      })
    } finally {
      await view?.close()
      for (const d of image.devices) d.close()
    }
    t.notOk(view && isMounted(view.mnt), 'unmounted at the end')
  })
})
