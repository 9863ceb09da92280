// Bad input end to end: every refusal the CLI documents (docs/cli.md), against one real exported image
// and tampered copies of its manifest. Each case checks the documented exit code, exactly one stderr line
// "extfs: <problem>" naming the problem, no stack trace, nothing mounted at the mountpoint, no view
// process left, and nothing created or rewritten beside the manifest. Run with each engine
// (test/e2e/bad-input.test.ts, fuse-native-engine.test.ts): every refusal is the same.
import type { Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { promises as fsp, statSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { run, runOk, RunResult } from '../exec'
import { ensureUnmounted, EXTFS, release, scratchDir, withView, withoutProgress } from '../extfs'
import { LoopFs, remountReadOnly, remountReadWrite, withLoopFs } from '../loopfs'
import { seededBytes } from '../populate'
import {
  assertRefused, cli, createRawLoop, destroyRawLoop, Loose, mountsAt, processesMentioning, readJson, recordOf,
  snapshotDir, tamperedCopy, viewState, WITHOUT_TEST_HOOKS, writeBeside,
} from '../tamper'
import { useEngine, type Engine } from '../engines'

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

const enum Exit { Usage = 2, BadManifest = 3, Device = 4, Mountpoint = 5, NoFuse = 6, Export = 8, Permission = 9 }

const LONG_AGO = new Date('2001-01-01T00:00:00Z')

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups']

/** What one refused command gets: a fresh directory for its files, an empty mountpoint in it, a log elsewhere. */
interface CaseCtx {
  t: Test
  dir: string
  mnt: string
  log: string
}

interface RefusalCase {
  name: string
  code: number
  msg: RegExp
  /** Build the case's files in ctx.dir (and change ctx.mnt if needed); returns extfs's argv, or a runner. */
  prepare: (ctx: CaseCtx) => Promise<string[] | (() => Promise<RunResult>)>
  /** Checks of its own, after the common ones; `ms` is how long the command took. */
  after?: (ctx: CaseCtx, ms: number) => Promise<void>
}

let caseNo = 0

/** Run one refusal case as its own subtest, with every "nothing happened" check. */
function refusal(t: Test, root: string, c: RefusalCase): Promise<void> {
  return t.test(c.name, async (t) => {
    const dir = path.join(root, `case-${++caseNo}`)
    await fsp.mkdir(path.join(dir, 'mnt'), { recursive: true })
    const ctx: CaseCtx = { t, dir, mnt: path.join(dir, 'mnt'), log: path.join(root, 'logs', `case-${caseNo}.log`) }
    // Should a refusal regress into a mount, it must not outlive the test (nor block removing the scratch dir).
    t.teardown(async () => {
      if (mountsAt(ctx.mnt).some((m) => m.source.startsWith('extfs:'))) await ensureUnmounted(ctx.mnt)
    })
    const how = await c.prepare(ctx)
    const before = await snapshotDir(dir)
    const mountsBefore = mountsAt(ctx.mnt)

    const started = Date.now()
    const r = typeof how === 'function' ? await how() : await cli(how)
    const ms = Date.now() - started

    assertRefused(t, r, c.code, c.msg)
    t.same(mountsAt(ctx.mnt), mountsBefore, 'nothing mounted at the mountpoint')
    t.equal(viewState(ctx.mnt), undefined, 'no view state in /run/extfs')
    t.same(await lingering(dir), [], 'no view process left behind')
    t.same(await snapshotDir(dir), before, 'nothing created or rewritten')
    await c.after?.(ctx, ms)
  }) as unknown as Promise<void>
}

/** A refused background mount's child may take a moment to exit after reporting; then none may remain. */
async function lingering(needle: string): Promise<number[]> {
  for (let i = 0; i < 60; i++) {
    const pids = processesMentioning(needle)
    if (pids.length === 0) return pids
    await new Promise((r) => setTimeout(r, 50))
  }
  return processesMentioning(needle)
}

/** The inode at `rel` ("" for the root, "sub/deeper", ...) in a manifest's tree. */
function lookup(m: Loose, rel: string): Loose {
  let node = m.inodes.find((i: Loose) => i.ino === m.root)
  for (const part of rel.split('/').filter(Boolean)) {
    const e = node.entries.find((x: Loose) => x.name === part)
    node = m.inodes.find((i: Loose) => i.ino === e.ino)
  }
  return node
}

/** The exported tree: a few small files, a sparse file with several extents, nested directories. */
async function populate(data: string): Promise<void> {
  await fsp.mkdir(path.join(data, 'sub', 'deeper'), { recursive: true })
  await fsp.writeFile(path.join(data, 'small'), 'small file\n')
  await fsp.writeFile(path.join(data, 'f4097'), seededBytes(1, 4097))
  await fsp.writeFile(path.join(data, 'sub', 'inner'), seededBytes(2, 10_000))
  await fsp.writeFile(path.join(data, 'sub', 'deeper', 'leaf'), 'leaf\n')
  // Data, hole, data, hole, data: a hole always splits extents, so this file has (at least) three.
  const fh = await fsp.open(path.join(data, 'big'), 'w')
  for (let i = 0; i < 3; i++) await fh.write(seededBytes(10 + i, 256 * KiB), 0, 256 * KiB, i * MiB)
  await fh.close()
}

/** The whole corpus, with `engine` serving the views it mounts: two tests, queued one after the other. */
export function badInputCorpus(t: Test, engine: Engine): Promise<unknown> {
  return Promise.all([
    t.test(`refusals against one exported image, ${engine.name} engine`, (t) => mountRefusals(t, engine)),
    t.test(`export refusals (and two exports that work), ${engine.name} engine`, (t) => exportRefusals(t, engine)),
  ])
}

async function mountRefusals(t: Test, engine: Engine): Promise<void> {
  useEngine(engine)
  const state = await scratchDir(t)
  await fsp.mkdir(path.join(state, 'logs'))
  const key = path.join(state, 'key')
  await fsp.writeFile(key, randomBytes(32).toString('hex') + '\n')
  const otherKey = path.join(state, 'other-key')
  await fsp.writeFile(otherKey, randomBytes(32).toString('hex') + '\n')

  await withLoopFs({ fs: 'ext4' }, async (fs: LoopFs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await populate(data)
    const base = path.join(state, 'base')
    await fsp.mkdir(base)
    const manifest = path.join(base, 'm.json')
    try {
      const exp = await cli(['export', data, '--output', manifest, '--frozen-image', 'freeze', '--key', key, '--mapper', 'vfs']) // reads the v1 JSON below
      t.equal(exp.code, 0, `signed export: ${exp.stderr}`)
      t.match(exp.stdout, /^exported \d+ inodes to .*, config ID [0-9a-f]+/)
      const m = await readJson(manifest)
      const big = lookup(m, 'big')
      t.ok(big.extents.length >= 3, `big has several extents (${big.extents.length})`)
      t.ok(m.signature, 'the manifest is signed')
      const recordBefore = await fsp.readFile(recordOf(manifest, m), 'utf8')

      await t.test('the untampered image mounts and serves (baseline)', async (t) => {
        await withView(manifest, async (view) => {
          t.equal(await fsp.readFile(path.join(view, 'small'), 'utf8'), 'small file\n')
          t.same(await fsp.readFile(path.join(view, 'big')), await fsp.readFile(path.join(data, 'big')))
        })
      })

      // ---------------------------------------------------------------- the manifest
      const mount = (c: CaseCtx, man: string, ...extra: string[]) => ['mount', man, c.mnt, '--log-file', c.log, ...extra]
      const tampered = (edit: (m: Loose) => void) => async (c: CaseCtx) => mount(c, await tamperedCopy(manifest, c.dir, edit))
      const text = await fsp.readFile(manifest, 'utf8')
      const rootEntry = (name: string) => (x: Loose) => {
        lookup(x, '').entries[0].name = name
      }
      const manifestCases: RefusalCase[] = [
        { name: 'malformed JSON', code: Exit.BadManifest, msg: /^extfs: manifest is not valid JSON/,
          prepare: async (c) => mount(c, await writeBeside(manifest, c.dir, text.replace('"version":1,', '"version":1,,'))) },
        { name: 'truncated (cut in half)', code: Exit.BadManifest, msg: /not valid JSON \(truncated\?\)/,
          prepare: async (c) => mount(c, await writeBeside(manifest, c.dir, text.slice(0, Math.floor(text.length / 2)))) },
        { name: 'unknown format version', code: Exit.BadManifest, msg: /unknown manifest version 3.*upgrade extfs/,
          prepare: tampered((x) => (x.version = 3)) },
        { name: 'unknown feature', code: Exit.BadManifest, msg: /feature "zstd-extents".*does not know.*upgrade extfs/,
          prepare: tampered((x) => x.features.push('zstd-extents')) },
        { name: 'extent past the device end', code: Exit.BadManifest, msg: /inode \d+: extents\[1\] past device end/,
          prepare: tampered((x) => {
            const e = lookup(x, 'big').extents[1]
            e.deviceOffset = x.devices[0].size - e.length + 4096
          }) },
        { name: 'overlapping extents', code: Exit.BadManifest, msg: /inode \d+: extents overlapping/,
          prepare: tampered((x) => {
            const [a, b] = lookup(x, 'big').extents
            b.fileOffset = a.fileOffset + a.length - 4096
          }) },
        { name: 'unsorted extents', code: Exit.BadManifest, msg: /inode \d+: extents unsorted/,
          prepare: tampered((x) => lookup(x, 'big').extents.reverse()) },
        { name: 'entry name empty', code: Exit.BadManifest, msg: /entry "" is empty/, prepare: tampered(rootEntry('')) },
        { name: 'entry name "."', code: Exit.BadManifest, msg: /entry "\." is reserved/, prepare: tampered(rootEntry('.')) },
        { name: 'entry name ".."', code: Exit.BadManifest, msg: /entry "\.\." is reserved/, prepare: tampered(rootEntry('..')) },
        { name: 'entry name containing "/"', code: Exit.BadManifest, msg: /entry "\.\.\/etc" contains "\/"/,
          prepare: tampered(rootEntry('../etc')) },
        { name: 'entry name containing NUL', code: Exit.BadManifest, msg: /entry "a\\u0000b" contains NUL/,
          prepare: tampered(rootEntry('a\0b')) },
        { name: 'entry name repeated within a directory', code: Exit.BadManifest, msg: /entry "[^"]+" appears twice/,
          prepare: tampered((x) => {
            const entries = lookup(x, '').entries
            entries[1].name = entries[0].name
          }) },
        { name: 'directory cycle (a directory entered from below itself)', code: Exit.BadManifest,
          msg: /points at directory \d+, its own ancestor \(a cycle\)/,
          prepare: tampered((x) => lookup(x, 'sub/deeper').entries.push({ name: 'up', ino: lookup(x, 'sub').ino })) },
        { name: 'escape attempt (an entry pointing back at the root)', code: Exit.BadManifest,
          msg: /entry "escape" points back at the root directory/,
          prepare: tampered((x) => lookup(x, 'sub').entries.push({ name: 'escape', ino: x.root })) },
        { name: 'missing manifest file', code: Exit.BadManifest, msg: /manifest .*nope\.json does not exist/,
          prepare: async (c) => mount(c, path.join(c.dir, 'nope.json')) },
      ]
      for (const c of manifestCases) await refusal(t, state, c)

      await refusal(t, state, {
        name: 'oversized manifest (sparse 1.1 GiB) is refused fast, before reading', code: Exit.BadManifest,
        msg: /manifest .*m\.json is \d+ bytes, over the limit of \d+/,
        prepare: async (c) => {
          const huge = path.join(c.dir, 'm.json')
          await fsp.writeFile(huge, '')
          await fsp.truncate(huge, 17 * GiB) // over both versions' limits (1 GiB, 16 GiB): refused unread
          // relatime updates atime on a read when atime is older than mtime: an atime left alone proves that
          // nothing was read. The control file proves that this filesystem does update it.
          const control = path.join(c.dir, 'control')
          await fsp.writeFile(control, 'x')
          for (const f of [huge, control]) await fsp.utimes(f, LONG_AGO, new Date())
          await runOk('cat', [control])
          return mount(c, huge)
        },
        after: async (c, ms) => {
          const huge = path.join(c.dir, 'm.json')
          c.t.ok(ms < 5000, `refused in ${ms} ms`)
          if (statSync(path.join(c.dir, 'control')).atimeMs !== LONG_AGO.getTime()) {
            c.t.equal(statSync(huge).atimeMs, LONG_AGO.getTime(), 'not one byte was read (atime unchanged)')
          } else c.t.comment('atime is not updated on this filesystem; the no-read check is skipped')
          assertRefused(c.t, await cli(['inspect', huge]), Exit.BadManifest, /over the limit/, 'inspect')
        },
      })

      // ---------------------------------------------------------------- signatures
      await t.test('signed manifest mounts with its key', async (t) => {
        await withView(manifest, async (view) => {
          t.equal(await fsp.readFile(path.join(view, 'sub', 'deeper', 'leaf'), 'utf8'), 'leaf\n')
        }, ['--key', key])
        t.pass('mounted and unmounted')
      })
      const signingCases: RefusalCase[] = [
        { name: 'altered signed manifest with --key', code: Exit.BadManifest, msg: /signature does not match/,
          prepare: async (c) => mount(c, await tamperedCopy(manifest, c.dir, (x) => (lookup(x, 'small').perm = 0o666)), '--key', key) },
        { name: 'unsigned manifest with --key', code: Exit.BadManifest, msg: /not signed but --key was given/,
          prepare: async (c) => mount(c, await tamperedCopy(manifest, c.dir, (x) => delete x.signature), '--key', key) },
        { name: 'signed manifest with the wrong key', code: Exit.BadManifest, msg: /signature does not match/,
          prepare: async (c) => mount(c, await writeBeside(manifest, c.dir, text), '--key', otherKey) },
        { name: 'key file missing', code: Exit.Usage, msg: /key file .*no-such-key does not exist/,
          prepare: async (c) => mount(c, await writeBeside(manifest, c.dir, text), '--key', path.join(c.dir, 'no-such-key')) },
        { name: 'key file too short', code: Exit.Usage, msg: /key file .* is too short/,
          prepare: async (c) => {
            const short = path.join(c.dir, 'short-key')
            await fsp.writeFile(short, 'only15bytes....')
            return mount(c, await writeBeside(manifest, c.dir, text), '--key', short)
          } },
      ]
      for (const c of signingCases) await refusal(t, state, c)

      // ---------------------------------------------------------------- devices
      const deviceSize = m.devices[0].size as number
      const same = await createRawLoop(deviceSize)
      const small = await createRawLoop(1 * MiB)
      try {
        const deviceCases: RefusalCase[] = [
          { name: '--device naming a missing path', code: Exit.Device, msg: /device d0: \/dev\/does-not-exist does not exist/,
            prepare: async (c) => mount(c, await writeBeside(manifest, c.dir, text), '--device', 'd0=/dev/does-not-exist') },
          { name: '--device naming another device of the same size (fingerprints differ)', code: Exit.Device,
            msg: new RegExp(`device d0: ${same.loopDevice} is not the exported device \\(fingerprint at byte \\d+ differs\\)`),
            prepare: async (c) => mount(c, await writeBeside(manifest, c.dir, text), '--device', `d0=${same.loopDevice}`) },
          { name: '--device naming a device too small', code: Exit.Device,
            msg: new RegExp(`device d0: ${small.loopDevice} is too small \\(${MiB} bytes`),
            prepare: async (c) => mount(c, await writeBeside(manifest, c.dir, text), '--device', `d0=${small.loopDevice}`) },
          { name: 'device not found by its identity', code: Exit.Device, msg: /device d0 .* not found on this host; name it with --device d0=/,
            prepare: tampered((x) => (x.devices[0].identity.fsUuid = '00000000-dead-beef-0000-000000000000')) },
          { name: '--device naming an unknown device id', code: Exit.Device, msg: /--device nosuch: the manifest has no device nosuch/,
            prepare: async (c) => mount(c, await writeBeside(manifest, c.dir, text), '--device', `nosuch=${fs.loopDevice}`) },
          { name: '--device without <id>=<path>', code: Exit.Usage, msg: /--device takes <id>=<path>/,
            prepare: async (c) => mount(c, await writeBeside(manifest, c.dir, text), '--device', fs.loopDevice) },
        ]
        for (const c of deviceCases) await refusal(t, state, c)
      } finally {
        await destroyRawLoop(same)
        await destroyRawLoop(small)
      }

      // ---------------------------------------------------------------- the mountpoint
      const mountpointCases: RefusalCase[] = [
        { name: 'mountpoint missing', code: Exit.Mountpoint, msg: /mountpoint .* does not exist/,
          prepare: async (c) => {
            await fsp.rmdir(c.mnt)
            return mount(c, await writeBeside(manifest, c.dir, text))
          } },
        { name: 'mountpoint not empty', code: Exit.Mountpoint, msg: /mountpoint .* is not empty/,
          prepare: async (c) => {
            await fsp.writeFile(path.join(c.mnt, 'already-here'), 'x')
            return mount(c, await writeBeside(manifest, c.dir, text))
          } },
        { name: 'mountpoint not a directory', code: Exit.Mountpoint, msg: /mountpoint .* is not a directory/,
          prepare: async (c) => {
            await fsp.rmdir(c.mnt)
            await fsp.writeFile(c.mnt, '')
            return mount(c, await writeBeside(manifest, c.dir, text))
          } },
        { name: 'mountpoint already a mount (tmpfs)', code: Exit.Mountpoint, msg: /mountpoint .* is already a mount/,
          prepare: async (c) => {
            await runOk('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'extfs-test', c.mnt])
            c.t.teardown(() => run('umount', [c.mnt]))
            return mount(c, await writeBeside(manifest, c.dir, text))
          } },
      ]
      for (const c of mountpointCases) await refusal(t, state, c)

      // ---------------------------------------------------------------- no FUSE
      // A private mount namespace whose /dev is an empty tmpfs: /dev/fuse is absent only there.
      const inPrivateDev = (setup: string, argv: string[]) => () =>
        run('unshare', ['-m', 'sh', '-c', `mount -t tmpfs none /dev && ${setup}exec "$0" "$@"`, ...WITHOUT_TEST_HOOKS, EXTFS, ...argv])
      await refusal(t, state, {
        name: 'no /dev/fuse (private /dev holding only /dev/null)', code: Exit.NoFuse, msg: /FUSE is not available: cannot open \/dev\/fuse/,
        prepare: async (c) => inPrivateDev('mknod -m 666 /dev/null c 1 3 && ', mount(c, await writeBeside(manifest, c.dir, text))),
      })
      await refusal(t, state, {
        name: 'no /dev/fuse (private, empty /dev)', code: Exit.NoFuse, msg: /FUSE is not available: cannot open \/dev\/fuse/,
        prepare: async (c) => inPrivateDev('', mount(c, await writeBeside(manifest, c.dir, text))),
      })
      await refusal(t, state, {
        name: 'no /dev/fuse, --foreground (private, empty /dev)', code: Exit.NoFuse, msg: /FUSE is not available: cannot open \/dev\/fuse/,
        prepare: async (c) => inPrivateDev('', [...mount(c, await writeBeside(manifest, c.dir, text)), '--foreground']),
      })

      // ---------------------------------------------------------------- not root
      const asNobody = (argv: string[]) => () => run('setpriv', [...NOBODY, ...WITHOUT_TEST_HOOKS, EXTFS, ...argv])
      // A log directory that nobody (uid 65534) may write into, so only the missing root privileges stand in the way.
      const openLogDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'extfs-nobody-log-'))
      await fsp.chmod(openLogDir, 0o1777)
      t.teardown(() => fsp.rm(openLogDir, { recursive: true, force: true }))
      const nobodyCases: RefusalCase[] = [
        { name: 'mount as non-root (log file it may write)', code: Exit.Permission, msg: /mount needs root/,
          prepare: async (c) => asNobody(['mount', await writeBeside(manifest, c.dir, text), c.mnt, '--log-file', path.join(openLogDir, 'view.log')]) },
        { name: 'mount as non-root (default log file)', code: Exit.Permission, msg: /mount needs root/,
          prepare: async (c) => asNobody(['mount', await writeBeside(manifest, c.dir, text), c.mnt]) },
        { name: 'export as non-root', code: Exit.Permission, msg: /export needs root/,
          prepare: async (c) => asNobody(['export', data, '--output', path.join(c.dir, 'again.json')]) },
        { name: 'release as non-root', code: Exit.Permission, msg: /release needs root/,
          prepare: async (c) => asNobody(['release', await writeBeside(manifest, c.dir, text)]) },
      ]
      for (const c of nobodyCases) await refusal(t, state, c)

      // ---------------------------------------------------------------- export of an already frozen filesystem
      await refusal(t, state, {
        name: 'export of a filesystem that is already frozen', code: Exit.Export, msg: /is already frozen/,
        prepare: async (c) => ['export', data, '--output', path.join(c.dir, 'again.json')],
      })

      // ---------------------------------------------------------------- command line
      const usageCases: RefusalCase[] = [
        { name: 'unknown option', code: Exit.Usage, msg: /^extfs: unknown option '--bogus'/,
          prepare: async (c) => [...mount(c, await writeBeside(manifest, c.dir, text)), '--bogus'] },
        { name: 'export without --output', code: Exit.Usage, msg: /^extfs: required option '--output <manifest>' not specified/,
          prepare: async () => ['export', data] },
        { name: 'unknown command', code: Exit.Usage, msg: /^extfs: unknown command 'frobnicate'/,
          prepare: async () => ['frobnicate'] },
      ]
      for (const c of usageCases) await refusal(t, state, c)

      t.equal(await fsp.readFile(recordOf(manifest, m), 'utf8'), recordBefore, 'the base record was never touched')
    } finally {
      await release(manifest)
    }
  })
}

async function exportRefusals(t: Test, engine: Engine): Promise<void> {
  useEngine(engine)
  const state = await scratchDir(t)
  const out = path.join(state, 'out')
  await fsp.mkdir(out)
  // inline_data: ext4 keeps files of up to ~60 bytes in the inode itself, where raw reads cannot find them.
  await withLoopFs({ fs: 'ext4', mkfsArgs: ['-O', 'inline_data'] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await fsp.writeFile(path.join(data, 'tiny'), 'inline content\n')
    await fsp.writeFile(path.join(data, 'empty'), '')
    await fsp.writeFile(path.join(data, 'blocks'), seededBytes(7, 20_000))
    await runOk('sync', ['-f', data])

    /** Writes to the source filesystem must still go through: it was not left frozen. */
    const notFrozen = async (t: Test) => {
      const probe = path.join(fs.mountpoint, `probe-${++caseNo}`)
      const r = await run('timeout', ['5', 'touch', probe], { timeoutMs: 10_000 })
      t.equal(r.code, 0, `a write to ${fs.mountpoint} completes (not left frozen)${r.code ? `: ${r.code} ${r.stderr}` : ''}`)
      await fsp.rm(probe, { force: true })
    }
    const exportRefused = (name: string, argv: () => Promise<string[]>, msg: RegExp) =>
      t.test(name, async (t) => {
        const before = [await snapshotDir(out), await snapshotDir(fs.mountpoint)]
        const args = await argv()
        const r = await cli(args)
        // Should the refusal regress into an export, its freeze must not outlive the test.
        if (r.code === 0) await release(args[args.indexOf('--output') + 1])
        assertRefused(t, r, Exit.Export, msg)
        t.same([await snapshotDir(out), await snapshotDir(fs.mountpoint)], before, 'nothing written, neither beside the output nor on the source')
        await notFrozen(t)
      })

    await exportRefused('output on the filesystem being frozen', async () => ['export', data, '--output', path.join(fs.mountpoint, 'm.json')],
      /output .* is on the filesystem being frozen/)
    await exportRefused('config-ID record on the filesystem being frozen',
      async () => ['export', data, '--output', path.join(out, 'm.json'), '--record', path.join(fs.mountpoint, 'm.config-id')],
      /config-ID record .* is on the filesystem being frozen/)
    await exportRefused('--frozen-image none on a read-write mount without --assume-stable',
      async () => ['export', data, '--output', path.join(out, 'm.json'), '--frozen-image', 'none'],
      /is mounted read-write: --frozen-image none needs a read-only mount, or --assume-stable/)

    const tmpfs = path.join(state, 'tmpfs')
    await fsp.mkdir(tmpfs)
    await runOk('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'extfs-test', tmpfs])
    try {
      await fsp.writeFile(path.join(tmpfs, 'f'), 'on tmpfs\n')
      await exportRefused('a path on tmpfs', async () => ['export', tmpfs, '--output', path.join(out, 'm.json')],
        /filesystem type tmpfs is not supported/)
    } finally {
      await run('umount', [tmpfs])
    }
    await exportRefused('a path on /proc', async () => ['export', '/proc/sys/kernel', '--output', path.join(out, 'm.json')],
      /filesystem type proc is not supported/)
    await exportRefused('paths on two different filesystems', async () => ['export', data, state, '--output', path.join(out, 'm.json')],
      /are on different filesystems/)
    await exportRefused('overlapping paths', async () => ['export', data, path.join(data, path.basename((await fsp.readdir(data))[0])), '--output', path.join(out, 'm.json')],
      /is inside .*: give each tree once/)
    await exportRefused('a nonexistent path', async () => ['export', path.join(data, 'no-such'), '--output', path.join(out, 'm.json')],
      /no-such: no such file or directory/)

    await t.test('--frozen-image none on a read-only mount exports', async (t) => {
      await remountReadOnly(fs)
      try {
        const manifest = path.join(out, 'ro.json')
        const r = await cli(['export', data, '--output', manifest, '--frozen-image', 'none'])
        t.equal(r.code, 0, `export: ${r.stderr}`)
        t.equal(withoutProgress(r.stderr), '', 'nothing on stderr')
        t.notMatch(r.stdout, /stays frozen/, 'nothing is held frozen')
        const m = await readJson(manifest)
        t.equal(m.frozenImage.kind, 'none')
        t.equal(JSON.parse(await fsp.readFile(`${manifest}.config-id`, 'utf8')).state, 'current')
        await withView(manifest, async (view) => {
          t.equal(await fsp.readFile(path.join(view, 'tiny'), 'utf8'), 'inline content\n')
        })
        const rel = await cli(['release', manifest])
        t.equal(rel.code, 0, `release: ${rel.stderr}`)
      } finally {
        await remountReadWrite(fs)
      }
      await notFrozen(t)
    })

    await t.test('inline data is carried in the manifest and read back through the view', async (t) => {
      const manifest = path.join(out, 'inline.json')
      try {
        const r = await cli(['export', data, '--output', manifest, '--mapper', 'vfs']) // the walker's carrying; the bulk mapper's: ext4-bulk.test
        t.equal(r.code, 0, `export: ${r.stderr}`)
        const m = await readJson(manifest)
        t.ok(m.features.includes('inline-data'), 'feature inline-data is declared')
        const tiny = lookup(m, 'tiny')
        t.equal(tiny.inline, Buffer.from('inline content\n').toString('base64'), 'the content is in the manifest')
        t.equal(tiny.extents, undefined, 'and no extents')
        t.ok(lookup(m, 'blocks').extents?.length > 0, 'a 20000-byte file still has extents')
        await withView(manifest, async (view) => {
          t.equal(await fsp.readFile(path.join(view, 'tiny'), 'utf8'), 'inline content\n', 'inline file reads back')
          t.equal((await fsp.stat(path.join(view, 'tiny'))).size, 15)
          t.equal(await fsp.readFile(path.join(view, 'empty'), 'utf8'), '', 'empty file reads back')
          t.same(await fsp.readFile(path.join(view, 'blocks')), seededBytes(7, 20_000), 'extent file reads back')
        })
      } finally {
        await release(manifest)
      }
      await notFrozen(t)
    })
  })
}
