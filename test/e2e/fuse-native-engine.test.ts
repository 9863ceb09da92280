// The first engine (EXTFS_ENGINE=fuse-native: every request in JS through fuse-native and libfuse2,
// src/fuse-native-engine/) through the scenarios the native engine runs: tar, rsync and dd of ext4 and
// XFS compared with the source, the bad-input corpus, the lifecycle of a view. Then what it does where
// it cannot do what the native engine does (docs/native-engine.md, "Testing the fuse-native engine"):
// - times: served in milliseconds, so the round trips compare with the source's times floored to the
//   ms, to the nanosecond (the views' sub-ms part must be zero, not anything else);
// - a view from `extfs serve` (leases, in the C engine): refused with one line, exit 2;
// - deltas: not followed; once the record moved on, opens and reads of files opened before are
//   refused (ESTALE, logged) instead of served from blocks that now hold other data, and a new mount
//   is refused (exit 7);
// - metadata its C passes in 32 bits or as unsigned milliseconds: an image with times before 1970 or
//   inode numbers over 32 bits is refused at mount (exit 2); statfs figures over 32 bits, EOVERFLOW.
import t from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { FUSE_NATIVE_ENGINE, useEngine } from '../helpers/engines'
import { backupRoundTrip, LAYOUTS } from '../helpers/scenarios/backup'
import { badInputCorpus } from '../helpers/scenarios/bad-input'
import { lifecycleOfOneImage } from '../helpers/scenarios/lifecycle'
import { extfs, release, scratchDir, startServe, withView } from '../helpers/extfs'
import { withBtrfs } from '../helpers/btrfs'
import { withLoopFs } from '../helpers/loopfs'
import { run, runOk } from '../helpers/exec'
import { exportBtrfsImage, IMAGE_FILES, overwrittenOldExtents, readNamed, relocate, remapMoved, rootFiles } from '../helpers/moved'
import { assertRefused, cli, Loose, mountsAt, processesMentioning, readJson, tamperedCopy } from '../helpers/tamper'
import { KEY, signedImage } from '../helpers/serve-image'

const ENGINE = FUSE_NATIVE_ENGINE
const ESTALE = -116 // Node has no name for it

/** 0 when `p` resolves, else the errno it failed with. */
const errnoOf = (p: Promise<unknown>): Promise<number> => p.then(() => 0, (e: NodeJS.ErrnoException) => e.errno ?? -1)

const logLines = async (file: string): Promise<Loose[]> => (await fsp.readFile(file, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l))

void backupRoundTrip(t, LAYOUTS.ext4, ENGINE)
void backupRoundTrip(t, LAYOUTS.xfsMbr, ENGINE)
void badInputCorpus(t, ENGINE)
void lifecycleOfOneImage(t, ENGINE)

t.test('a view from extfs serve needs the native engine: one line, exit 2, nothing mounted', async (t) => {
  useEngine(ENGINE)
  const dir = await scratchDir(t)
  const image = signedImage('extfs-fuse-native-serve-')
  t.teardown(() => fsp.rm(image.dir, { recursive: true, force: true }))
  const keyFile = path.join(dir, 'key')
  await fsp.writeFile(keyFile, KEY)
  const served = await startServe(t, ['--key', keyFile, '--state', path.join(dir, 'serve.db'), '--interval', '0', image.manifest])
  const url = `${served.url}/nightly`
  const views = await scratchDir(t, 'extfs-fuse-native-views-') // named by the movers only, not by serve
  const mnt = path.join(views, 'mnt')
  await fsp.mkdir(mnt)
  const refusal = new RegExp(`^extfs: mounting from ${url} needs the native engine \\(unset EXTFS_ENGINE\\)\\n$`)
  for (const [what, argv] of [
    ['mount', ['mount', url, mnt, '--key', keyFile, '--log-file', path.join(views, 'mount.log')]],
    ['mount --foreground', ['mount', url, mnt, '--key', keyFile, '--log-file', path.join(views, 'fg.log'), '--foreground']],
    ['backup', ['backup', url, '--key', keyFile, '--log-file', path.join(views, 'backup.log'), '--', 'true']],
  ] as const) {
    assertRefused(t, await cli([...argv]), 2, refusal, what)
    t.same(mountsAt(mnt), [], `${what}: nothing mounted`)
    t.same(processesMentioning(views), [], `${what}: no view process left`)
  }
})

t.test('a delta it cannot follow: refused, never served from the moved blocks', async (t) => {
  useEngine(ENGINE)
  const scratch = await scratchDir(t)
  await withBtrfs({ devices: 1, data: 'single', metadata: 'dup', sizeMiB: 512 }, async (fs) => {
    const { manifest, source } = await exportBtrfsImage(t, fs, scratch)
    const contents = await readNamed(source, IMAGE_FILES)
    try {
      await withView(manifest, async (view, logFile) => {
        const held = await fsp.open(path.join(view, 'a')) // opened before the move, read only after it
        try {
          await relocate(fs)
          t.ok((await overwrittenOldExtents(manifest, contents)) > 0, 'the old locations now hold other data (reading them would be wrong)')
          await remapMoved(t, manifest)
          t.equal(await errnoOf(held.read(Buffer.alloc(4096), 0, 4096, 0)), ESTALE, 'a file opened before the delta is not read: ESTALE')
          t.equal(await errnoOf(fsp.readFile(path.join(view, 'b'))), ESTALE, 'an open after it: ESTALE')
          const lines = await logLines(logFile)
          t.ok(lines.some((l) => l.msg === 'read refused: frozen image not current' && l.path === '/a' && /config ID changed from/.test(l.reason)),
            'the refused read is logged with its path and the reason')
          t.notOk(lines.some((l) => /followed the config ID/.test(l.msg)), 'nothing was followed')
        } finally {
          await held.close()
        }
      })
      const mnt = path.join(scratch, 'after')
      await fsp.mkdir(mnt)
      const mount = await cli(['mount', manifest, mnt, '--log-file', path.join(scratch, 'after.log')])
      assertRefused(t, mount, 7, /^extfs: frozen image not current: config ID changed from [0-9a-f]+ to [0-9a-f]+\n$/, 'a new mount')
      t.same(mountsAt(mnt), [], 'nothing mounted')
    } finally {
      await release(manifest)
    }
  })
})

t.test('metadata fuse-native cannot pass on exactly: the mount or the statfs is refused, never served wrong', async (t) => {
  useEngine(ENGINE)
  const scratch = await scratchDir(t)
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await fsp.writeFile(path.join(data, 'apollo'), 'one small step\n')
    await runOk('touch', ['-h', '-d', '1969-07-20 20:17:40.123456789', path.join(data, 'apollo')])
    const manifest = path.join(scratch, 'm.json')
    try {
      // The walker's v1 JSON: the copies below tamper with it.
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze', '--mapper', 'vfs'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const ino = rootFiles(await readJson(manifest)).get('apollo').ino
      /** A copy of the manifest (beside its own copy of the record) with apollo's times after 1970 and `edit` applied. */
      const copy = async (name: string, edit: (apollo: Loose, m: Loose) => void) => {
        await fsp.mkdir(path.join(scratch, name))
        return tamperedCopy(manifest, path.join(scratch, name), (m) => {
          const apollo = rootFiles(m).get('apollo')
          for (const field of ['atime', 'mtime', 'ctime']) apollo[field] = [1_600_000_000, 123_456_789]
          edit(apollo, m)
        })
      }
      const wideIno = 2 ** 32 + 7
      const refusals: [string, string, RegExp][] = [
        ['a time before 1970', manifest, new RegExp(`^extfs: the fuse-native engine cannot serve /apollo \\(inode ${ino}\\) exactly: its atime \\(-\\d+ s since 1970\\) is outside what fuse-native passes`)],
        ['an inode number over 32 bits', await copy('wide-ino', (apollo, m) => {
          for (const e of m.inodes.find((i: Loose) => i.ino === m.root).entries) if (e.ino === apollo.ino) e.ino = wideIno
          apollo.ino = wideIno
        }), new RegExp(`^extfs: the fuse-native engine cannot serve /apollo \\(inode ${wideIno}\\) exactly: its inode number is over 32 bits`)],
      ]
      for (const [i, [what, man, message]] of refusals.entries()) {
        const mnt = path.join(scratch, `mnt-${i}`)
        await fsp.mkdir(mnt)
        assertRefused(t, await cli(['mount', man, mnt, '--log-file', path.join(scratch, 'refused.log')]), 2, message, what)
        t.same(mountsAt(mnt), [], `${what}: nothing mounted`)
      }
      const hugeFs = await copy('huge', (apollo) => (apollo.blocks = 2 ** 45)) // 2^42 blocks of 4 KiB
      await withView(hugeFs, async (view) => {
        const st = await run('stat', ['-f', view])
        t.not(st.code, 0, 'statfs of more than 2^32 blocks fails')
        t.match(st.stderr, /Value too large for defined data type/, 'with EOVERFLOW, not a count cut to 32 bits')
        t.equal(await fsp.readFile(path.join(view, 'apollo'), 'utf8'), 'one small step\n', 'the files still serve')
      })
    } finally {
      await release(manifest)
    }
  })
})
