// The life of a view, end to end on one exported image: verify and inspect, the read-only contract,
// statfs, config-ID changes, foreground mounts and signals, a dead view, a busy view, `extfs backup`,
// and finally `extfs release`, after which nothing may be opened or mounted any more. Run with each
// engine (test/e2e/lifecycle.test.ts, fuse-native-engine.test.ts): the life is the same.
import type { Test } from 'tap'
import { ChildProcess, spawn } from 'node:child_process'
import { promises as fsp, readdirSync } from 'node:fs'
import * as path from 'node:path'
import { run, runOk } from '../exec'
import { EXTFS, ensureUnmounted, release, scratchDir, withView } from '../extfs'
import { withLoopFs } from '../loopfs'
import { seededBytes } from '../populate'
import { assertRefused, cli, extfsMounts, Loose, mountsAt, readJson, recordOf, replaceAtomically, viewState, WITHOUT_TEST_HOOKS } from '../tamper'
import { useEngine, type Engine } from '../engines'
import { jsonResult } from '../json-results'

const KiB = 1024
const MiB = 1024 * KiB

/** Files of the exported tree and their content. */
const FILES: Record<string, Buffer> = {
  'hello.txt': Buffer.from('hello, frozen world\n'),
  'f4097': seededBytes(1, 4097),
  'dir/inner.bin': seededBytes(2, 300 * KiB),
  'dir/deeper/leaf': Buffer.from('leaf\n'),
  'big.bin': seededBytes(3, 3 * MiB + 5),
}

/** Node has no name for ESTALE ("Unknown system error -116"), so errors are matched by number. */
const ESTALE = -116

/** The content of a file, or the error code reading it failed with (so a failure is an assertion, not a throw). */
const readOrCode = (file: string): Promise<string> => fsp.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => `error ${e.code}`)

/** 0 when the file reads, else the errno reading it failed with. */
const readErrno = (file: string): Promise<number> => fsp.readFile(file).then(() => 0, (e: NodeJS.ErrnoException) => e.errno ?? -1)

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Poll (briefly) until `cond` holds; returns whether it did within `ms`. */
async function until(cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(25)) if (await cond()) return true
  return cond()
}

/** A fresh, empty mountpoint (and a log file beside it) under `root`. */
let n = 0
async function freshMountpoint(root: string): Promise<{ mnt: string; log: string }> {
  const dir = path.join(root, `view-${++n}`)
  await fsp.mkdir(path.join(dir, 'mnt'), { recursive: true })
  return { mnt: path.join(dir, 'mnt'), log: path.join(dir, 'view.log') }
}

/** Mount in the background; always unmounted at the end of the test. */
async function mountView(t: Test, manifest: string, root: string): Promise<{ mnt: string; log: string }> {
  const v = await freshMountpoint(root)
  t.teardown(() => ensureUnmounted(v.mnt))
  const r = await cli(['mount', manifest, v.mnt, '--log-file', v.log])
  if (r.code !== 0) throw new Error(`extfs mount failed (${r.code}): ${r.stderr}`)
  return v
}

/** Exit status of a child, resolved once it exited. */
function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
}

function logLines(text: string): Loose[] {
  return text.split('\n').filter(Boolean).map((l) => {
    try {
      return JSON.parse(l)
    } catch {
      return { unparsed: l }
    }
  })
}

export function lifecycleOfOneImage(t: Test, engine: Engine): Promise<unknown> {
  return t.test(`lifecycle of one exported image, ${engine.name} engine`, (t) => lifecycle(t, engine))
}

async function lifecycle(t: Test, engine: Engine): Promise<void> {
  useEngine(engine)
  const state = await scratchDir(t)
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    for (const [rel, content] of Object.entries(FILES)) {
      await fsp.mkdir(path.dirname(path.join(data, rel)), { recursive: true })
      await fsp.writeFile(path.join(data, rel), content)
    }
    const manifest = path.join(state, 'm.json')
    try {
      const exp = await cli(['export', data, '--output', manifest, '--frozen-image', 'freeze', '--mapper', 'vfs', '--json']) // reads the v1 JSON
      const exported = jsonResult(t, exp, 'extfs.export/1', 'export')
      const m = await readJson(manifest)
      const record = recordOf(manifest, m)
      t.match(exported, { manifest, record, configId: m.configId, format: 1, mapper: 'vfs', inodes: m.inodes.length }, 'export --json names what it wrote')
      t.same(exported.frozenImage, { kind: 'freeze', mountpoint: fs.mountpoint, fsType: 'ext4' }, 'and what holds the image')

      await t.test('verify: exit 0 and one line on a good image', async (t) => {
        const r = await cli(['verify', manifest])
        t.equal(r.code, 0, `verify: ${r.stderr}`)
        t.equal(r.stderr, '')
        t.match(r.stdout, new RegExp(`^ok: config ID ${m.configId} is current; devices d0=/dev/\\S+ match\\n$`), 'one line naming config ID and device')
        const j = jsonResult(t, await cli(['verify', manifest, '--json']), 'extfs.verify/1', 'verify')
        t.same(j, { schema: 'extfs.verify/1', manifest, configId: m.configId, manifestConfigId: m.configId, state: 'current', devices: [{ id: 'd0', path: fs.fsDevice }] })
      })

      await t.test('inspect and inspect --json agree with the manifest', async (t) => {
        const kinds: Record<string, number> = {}
        let bytes = 0
        let extents = 0
        for (const i of m.inodes) {
          kinds[i.kind] = (kinds[i.kind] ?? 0) + 1
          if (i.kind === 'file') {
            bytes += i.size
            extents += (i.extents ?? []).length
          }
        }
        t.same(kinds, { dir: 3, file: 5 }, 'the manifest itself holds 3 dirs and 5 files')
        t.equal(bytes, Object.values(FILES).reduce((s, b) => s + b.length, 0), 'and the bytes written')

        const s = jsonResult(t, await cli(['inspect', manifest, '--json']), 'extfs.inspect/1', 'inspect')
        t.equal(s.manifest, manifest)
        t.equal(s.configId, m.configId)
        t.equal(s.format, 1)
        t.same(s.inodes, kinds, 'inode counts by kind')
        t.equal(s.bytes, bytes, 'file bytes')
        t.equal(s.extents, extents, 'extent count')
        t.equal(s.devices.length, m.devices.length, 'device count')
        t.equal(s.devices[0].id, 'd0')
        t.equal(s.devices[0].size, m.devices[0].size)
        t.equal(s.frozenImage.kind, 'freeze')
        t.equal(s.signed, false)

        const h = await cli(['inspect', manifest])
        t.equal(h.code, 0, `inspect: ${h.stderr}`)
        t.match(h.stdout, new RegExp(`config ID\\s+${m.configId}`))
        t.match(h.stdout, /inodes\s+.*\b3 dir\b/)
        t.match(h.stdout, /inodes\s+.*\b5 file\b/)
        t.match(h.stdout, new RegExp(`files\\s+${bytes} bytes; ${extents} extents`))
        t.equal(h.stdout.split('\n').filter((l) => l.startsWith('device ')).length, 1, 'one device line')
        t.match(h.stdout, new RegExp(`device d0\\s+${m.devices[0].size} bytes`))
      })

      await t.test('every mutation through the view fails with EROFS', async (t) => {
        await withView(manifest, async (view) => {
          const f = path.join(view, 'hello.txt')
          const attempts: Array<[string, string, string[]]> = [
            ['touch a new file', 'touch', [path.join(view, 'new')]],
            ['touch an existing file', 'touch', [f]],
            ['mkdir', 'mkdir', [path.join(view, 'newdir')]],
            ['rm', 'rm', ['-f', f]],
            ['rmdir', 'rmdir', [path.join(view, 'dir', 'deeper')]],
            ['mv', 'mv', [f, path.join(view, 'renamed')]],
            ['ln', 'ln', [f, path.join(view, 'hardlink')]],
            ['ln -s', 'ln', ['-s', 'hello.txt', path.join(view, 'symlink')]],
            ['chmod', 'chmod', ['600', f]],
            ['chown', 'chown', ['1:1', f]],
            ['setfattr', 'setfattr', ['-n', 'user.x', '-v', '1', f]],
            ['truncate', 'truncate', ['-s', '0', f]],
            ['open for write', 'sh', ['-c', 'echo x > "$0"', f]],
            ['open for append', 'sh', ['-c', 'echo x >> "$0"', f]],
          ]
          for (const [what, cmd, args] of attempts) {
            const r = await run(cmd, args, { timeoutMs: 10_000 })
            t.not(r.code, 0, `${what} fails`)
            t.match(r.stderr, /Read-only file system/, `${what}: EROFS (${r.stderr.trim()})`)
          }
          t.equal(await fsp.readFile(f, 'utf8'), FILES['hello.txt'].toString(), 'the file is unchanged')
          t.same((await fsp.readdir(view)).sort(), ['big.bin', 'dir', 'f4097', 'hello.txt'], 'no entry appeared or went away')
        })
      })

      await t.test('statfs on the view', async (t) => {
        await withView(manifest, async (view) => {
          const r = await runOk('stat', ['-f', '-c', '%S %b %f %a %c', view])
          const [bsize, blocks, bfree, bavail, files] = r.stdout.trim().split(' ').map(Number)
          t.equal(bsize, m.blockSize, `block size is the exported filesystem's (${bsize})`)
          t.ok(blocks > 0, `block count > 0 (${blocks})`)
          const usedBytes = Object.values(FILES).reduce((s, b) => s + b.length, 0)
          t.ok(blocks * bsize >= usedBytes, `blocks cover the data (${blocks * bsize} >= ${usedBytes})`)
          t.equal(bfree, 0, 'nothing free')
          t.equal(bavail, 0, 'nothing available')
          t.equal(files, m.inodes.length, 'inode count')
        })
      })

      await t.test('a changed config ID refuses opens (ESTALE); putting it back serves again', async (t) => {
        const original = await fsp.readFile(record, 'utf8')
        t.teardown(() => replaceAtomically(record, original))
        await withView(manifest, async (view, log) => {
          const f = path.join(view, 'hello.txt')
          t.equal(await fsp.readFile(f, 'utf8'), FILES['hello.txt'].toString(), 'opens before the change')
          const changed = { ...JSON.parse(original), configId: 'f'.repeat(32), updatedAt: new Date().toISOString() }
          await replaceAtomically(record, JSON.stringify(changed) + '\n')
          const r = await run('cat', [f])
          t.not(r.code, 0, 'cat fails')
          t.match(r.stderr, /Stale file handle/, 'with ESTALE')
          t.equal(await readErrno(path.join(view, 'dir', 'inner.bin')), ESTALE, 'every open fails with ESTALE')
          t.ok(logLines(await fsp.readFile(log, 'utf8')).some((l) => l.msg === 'open refused: frozen image not current' &&
            l.path === '/hello.txt' && /config ID changed/.test(l.reason)), 'the refusal is logged with path and reason')

          await replaceAtomically(record, original)
          t.equal(await fsp.readFile(f, 'utf8'), FILES['hello.txt'].toString(), 'opens again after the record is put back')
          t.same(await fsp.readFile(path.join(view, 'dir', 'inner.bin')), FILES['dir/inner.bin'])
        })
      })

      for (const sig of ['SIGTERM', 'SIGINT'] as const) {
        await t.test(`--foreground: serves until ${sig}, then exits 0 and unmounts`, async (t) => {
          const { mnt, log } = await freshMountpoint(state)
          const child = spawn(WITHOUT_TEST_HOOKS[0], [...WITHOUT_TEST_HOOKS.slice(1), EXTFS, 'mount', '--foreground', manifest, mnt, '--log-file', log], { stdio: ['ignore', 'pipe', 'pipe'] })
          let stderr = ''
          child.stderr!.on('data', (b) => (stderr += b))
          child.stdout!.resume()
          const done = exited(child)
          t.teardown(async () => {
            if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
            await ensureUnmounted(mnt)
          })
          const serving = await until(async () => extfsMounts(m.configId).some((x) => x.mountpoint === mnt) || child.exitCode !== null)
          t.ok(serving && child.exitCode === null, `the mountpoint serves (stderr: ${stderr})`)
          t.equal(await fsp.readFile(path.join(mnt, 'hello.txt'), 'utf8'), FILES['hello.txt'].toString(), 'and reads')
          child.kill(sig)
          const end = await Promise.race([done, sleep(20_000).then(() => undefined)])
          t.same(end, { code: 0, signal: null }, `exits 0 on ${sig}`)
          t.same(mountsAt(mnt), [], 'the mount is gone')
          t.equal(viewState(mnt), undefined, 'its /run/extfs state is gone')
        })
      }

      await t.test('a dead view: ENOTCONN, extfs umount removes it, a fresh mount works', async (t) => {
        const { mnt, log } = await mountView(t, manifest, state)
        const st = viewState(mnt)
        t.ok(st, 'the serving process is recorded in /run/extfs')
        t.ok(st && st.pid > 1 && st.pid !== process.pid, `pid ${st?.pid}`)
        process.kill(st!.pid, 'SIGKILL')
        t.ok(await until(() => !alive(st!.pid)), 'the view process is gone')
        // (stat of the root may still be answered from the kernel's attribute cache; listing and opening go to the view)
        await t.rejects(fsp.readdir(mnt), { code: 'ENOTCONN' }, 'listing the mountpoint fails with ENOTCONN')
        await t.rejects(fsp.readFile(path.join(mnt, 'hello.txt')), { code: 'ENOTCONN' }, 'opening a file fails with ENOTCONN')
        t.equal(mountsAt(mnt).length, 1, 'and is still mounted')

        const again = await cli(['mount', manifest, mnt, '--log-file', log])
        assertRefused(t, again, 5, /dead FUSE mount; run extfs umount|is already a mount|is already an extfs view/, 'mount on the dead view')

        const u = await cli(['umount', mnt])
        t.equal(u.code, 0, `extfs umount: ${u.stderr}`)
        t.same(mountsAt(mnt), [], 'the dead mount is gone')

        const r = await cli(['mount', manifest, mnt, '--log-file', log])
        t.equal(r.code, 0, `a fresh mount on the same directory: ${r.stderr}`)
        t.equal(await fsp.readFile(path.join(mnt, 'dir', 'deeper', 'leaf'), 'utf8'), 'leaf\n', 'serves')
        const u2 = await cli(['umount', mnt])
        t.equal(u2.code, 0, `umount: ${u2.stderr}`)
        t.same(mountsAt(mnt), [], 'unmounted')
      })

      await t.test('a busy view refuses umount (exit 5) and keeps serving', async (t) => {
        const { mnt } = await mountView(t, manifest, state)
        const st = viewState(mnt)
        t.ok(st, 'the serving process is recorded in /run/extfs')
        const sleeper = spawn('sleep', ['30'], { cwd: path.join(mnt, 'dir'), stdio: 'ignore' })
        t.teardown(() => {
          if (sleeper.exitCode === null && sleeper.signalCode === null) sleeper.kill('SIGKILL')
        })
        const u = await cli(['umount', mnt])
        assertRefused(t, u, 5, /is busy/, 'umount of a busy view')
        t.equal(mountsAt(mnt).length, 1, 'still mounted')
        t.equal(await readOrCode(path.join(mnt, 'hello.txt')), FILES['hello.txt'].toString(), 'still serving')
        t.equal(await readOrCode(`/proc/${sleeper.pid}/cwd/deeper/leaf`), 'leaf\n', 'the user of the view still reads through it')
        t.ok(st && alive(st.pid), 'the view process is alive')

        sleeper.kill('SIGKILL')
        await exited(sleeper)
        const u2 = await cli(['umount', mnt])
        t.equal(u2.code, 0, `umount once idle: ${u2.stderr}`)
        t.same(mountsAt(mnt), [], 'unmounted')
        t.ok(st && (await until(() => !alive(st.pid), 5000)), 'the view process exited')
      })

      await t.test('extfs umount on a plain directory exits 5', async (t) => {
        const { mnt } = await freshMountpoint(state)
        const r = await cli(['umount', mnt])
        assertRefused(t, r, 5, /is not an extfs mount/, 'umount of a plain directory')
      })

      await t.test('extfs backup: runs the command in the view, returns its status, leaves nothing', async (t) => {
        // backup makes its mountpoint in $TMPDIR: a directory of this test's own, since other test
        // files running beside this one (scripts/run-tests) make theirs in /tmp.
        const tmp = path.join(state, 'tmp')
        await fsp.mkdir(tmp)
        const env = { ...process.env, TMPDIR: tmp }
        const backupDirs = () => new Set(readdirSync(tmp).filter((d) => d.startsWith('extfs-backup-')))
        const dirsBefore = backupDirs()
        const tar = path.join(state, 'backup.tar')
        const log = path.join(state, 'backup.log')
        const r = await cli(['backup', manifest, '--log-file', log, '--', 'sh', '-c', `tar -cf '${tar}' . && exit 3`], { env })
        t.equal(r.code, 3, `the command's status comes back (stderr: ${r.stderr})`)
        const listing = (await runOk('tar', ['-tf', tar])).stdout.split('\n').filter(Boolean).map((p) => p.replace(/^\.\//, '').replace(/\/$/, ''))
        for (const rel of Object.keys(FILES)) t.ok(listing.includes(rel), `the tar holds ${rel}`)
        const x = path.join(state, 'untar')
        await fsp.mkdir(x)
        await runOk('tar', ['-xf', tar, '-C', x])
        for (const [rel, content] of Object.entries(FILES)) t.same(await fsp.readFile(path.join(x, rel)), content, `${rel} has the right content`)
        t.same(extfsMounts(m.configId), [], 'no view of this image is left mounted')
        t.same([...backupDirs()].filter((d) => !dirsBefore.has(d)), [], 'no extfs-backup-* directory left behind')

        const ok = await cli(['backup', manifest, '--log-file', log, '--', 'true'], { env })
        t.equal(ok.code, 0, `backup -- true exits 0 (${ok.stderr})`)
        const bad = await cli(['backup', manifest, '--log-file', log, '--', 'sh', '-c', 'kill -TERM $$'], { env })
        t.equal(bad.code, 128 + 15, 'a command killed by SIGTERM gives 143')
        t.same(extfsMounts(m.configId), [], 'still nothing mounted')
        t.same([...backupDirs()].filter((d) => !dirsBefore.has(d)), [], 'still no extfs-backup-* directory left')
      })

      await t.test('extfs backup: a request the view refused makes it exit 7, even when the command shrugs it off', async (t) => {
        const original = await fsp.readFile(record, 'utf8')
        t.teardown(() => replaceAtomically(record, original))
        // Renamed over the record while the command runs, as the initiator replaces it.
        const changed = path.join(path.dirname(record), `.changed-${process.pid}`)
        await fsp.writeFile(changed, JSON.stringify({ ...JSON.parse(original), configId: 'e'.repeat(32), updatedAt: new Date().toISOString() }) + '\n')
        const log = path.join(state, 'backup-refused.log')
        const script = `cat hello.txt >/dev/null && mv '${changed}' '${record}' && { cat dir/inner.bin >/dev/null 2>&1; true; }`
        const r = await cli(['backup', manifest, '--log-file', log, '--', 'sh', '-c', script])
        t.equal(r.code, 7, `exit 7, not the command's 0 (stderr: ${r.stderr.trim()})`)
        t.match(r.stderr, /^extfs: the view refused or failed \d+ request\(s\) while the command ran, first: open refused: config ID changed from [^;]*; the backup is incomplete \(log: .*\)\n$/,
          'one line saying how many requests were refused, and why the first was')
        t.same(extfsMounts(m.configId), [], 'no view of this image is left mounted')
      })

      // Last: release consumes the image.
      await t.test('release: the next open fails with ESTALE; verify and mount exit 7', async (t) => {
        const { mnt, log } = await mountView(t, manifest, state)
        const f = path.join(mnt, 'f4097')
        const fh = await fsp.open(f, 'r')
        const before = await fh.readFile()
        await fh.close()
        t.same(before, FILES.f4097, 'open + read before the release')
        const open = await fsp.open(path.join(mnt, 'big.bin'), 'r') // opened before, read only after the release
        t.teardown(() => open.close())

        const rel = jsonResult(t, await cli(['release', manifest, '--json']), 'extfs.release/1', 'release')
        t.same(rel, { schema: 'extfs.release/1', manifest, configId: m.configId, manifestConfigId: m.configId, fromJournal: false, frozenImage: { kind: 'freeze', mountpoint: fs.mountpoint }, thawed: true })
        t.equal(JSON.parse(await fsp.readFile(record, 'utf8')).state, 'released', 'the record says released')

        const cat = await run('cat', [path.join(mnt, 'hello.txt')])
        t.not(cat.code, 0, 'cat fails after the release')
        t.match(cat.stderr, /Stale file handle/, 'with ESTALE')
        t.equal(await readErrno(f), ESTALE, 'a file read before is refused too (ESTALE)')
        const readOpen = () => open.read(Buffer.alloc(4096), 0, 4096, 0).then(() => 0, (e: NodeJS.ErrnoException) => e.errno ?? -1)
        await sleep(500) // the view looks at the record every 250 ms; a read before that is served (and read ahead)
        t.equal(await readOpen(), ESTALE, 'a file opened before the release cannot be read after it (ESTALE)')
        const lines = logLines(await fsp.readFile(log, 'utf8'))
        t.equal(lines.filter((l) => l.msg === 'open refused: frozen image not current' && l.path === '/hello.txt' && /released/.test(l.reason)).length, 1,
          'the view logs the refused open with its path, once (the kernel\'s retry of it is not another open)')
        t.ok(lines.some((l) => l.msg === 'read refused: frozen image not current' && l.path === '/big.bin' && /released/.test(l.reason)),
          'and the refused read')
        t.ok(lines.every((l) => !l.unparsed), 'the log is JSON lines only')

        const v = await cli(['verify', manifest, '--json'])
        assertRefused(t, v, 7, /frozen image not current: frozen image \S+ was released/, 'verify --json')
        t.equal(v.stdout, '', 'a failure prints nothing on stdout, also with --json')
        const other = await freshMountpoint(state)
        const mo = await cli(['mount', manifest, other.mnt, '--log-file', other.log])
        assertRefused(t, mo, 7, /frozen image not current/, 'a new mount')
        t.same(mountsAt(other.mnt), [], 'nothing mounted')
        const again = await cli(['release', manifest])
        t.equal(again.code, 0, `releasing twice is harmless: ${again.stderr}`)
        t.equal(again.stdout, `released ${m.configId}; ${fs.mountpoint} was not frozen\n`, 'and says so')
      })
    } finally {
      await release(manifest)
    }
  })
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
