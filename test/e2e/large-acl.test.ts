// POSIX ACLs larger than the kernel passes through FUSE (issue 13, "silently wrong"): the kernel reads
// an ACL into one page itself (fs/fuse/acl.c), so a larger one cannot reach any FUSE reader. The
// view must say so at mount, and `extfs backup` must fail naming the files when its command asked for
// them, even though `tar --acls` only warns and exits 0. A tree without them backs up cleanly, and
// a 64 KiB user xattr (not an ACL: the reader's own buffer) passes exactly.
import t from 'tap'
import { promises as fsp, readFileSync } from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { withLoopFs } from '../helpers/loopfs'
import { run, runOk } from '../helpers/exec'
import { extfs, release, scratchDir, withView, withoutProgress } from '../helpers/extfs'
import { ExitCode } from '../../src/errors'
import { spawnSync } from 'node:child_process'
import pino from 'pino'
import { loadImage } from '../../src/mover/load'
import { NativeEngine } from '../../src/native-engine/native-engine'

/** Named entries in each large ACL: 4 + 8 × (600 + 4) bytes as an xattr, over a 4 KiB page. */
const NAMED = 600

/** Sets `count` named user entries (uids 20000..) on `target` with one setfacl, as an access or default ACL. */
async function setLargeAcl(target: string, count: number, kind: 'access' | 'default', dir: string): Promise<void> {
  const spec = path.join(dir, `${kind}.acl`)
  await fsp.writeFile(spec, Array.from({ length: count }, (_, i) => `u:${20000 + i}:r--`).join('\n') + '\n')
  await runOk('setfacl', [...(kind === 'default' ? ['-d'] : []), '-M', spec, target])
}

/** The view's log lines as objects. */
function logLines(file: string): { msg: string; [k: string]: unknown }[] {
  return readFileSync(file, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
}

t.test('XFS: ACLs over one page are named at mount and fail extfs backup; others pass exactly', async (t) => {
  const dir = await scratchDir(t, 'extfs-large-acl-')
  await withLoopFs({ fs: 'xfs' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    const large = path.join(data, 'large')
    const small = path.join(data, 'small')
    await fsp.mkdir(large, { recursive: true })
    await fsp.mkdir(small)
    const bigFile = path.join(large, 'big-acl-file')
    const bigDir = path.join(large, 'big-default-dir')
    await fsp.writeFile(bigFile, 'many readers\n')
    await setLargeAcl(bigFile, NAMED, 'access', dir)
    await fsp.mkdir(bigDir)
    await setLargeAcl(bigDir, NAMED, 'default', dir)
    for (const d of [large, small]) {
      await fsp.writeFile(path.join(d, 'normal-acl'), 'a few readers\n')
      await runOk('setfacl', ['-m', 'u:1234:rwx,g:5678:r-x', path.join(d, 'normal-acl')])
    }
    // The most a user xattr value may hold (XATTR_SIZE_MAX), set without a command line that long.
    const hugeValue = randomBytes(65536)
    const hugeFile = path.join(small, 'huge-xattr')
    await fsp.writeFile(hugeFile, 'one large xattr\n')
    await runOk('python3', ['-c', 'import os, sys; os.setxattr(sys.argv[1], "user.huge", sys.stdin.buffer.read())', hugeFile], { input: hugeValue })
    const sourceAcl = (await runOk('getfacl', ['-n', '-p', path.join(small, 'normal-acl')])).stdout

    const manifest = path.join(dir, 'acl.json')
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const inspect = await extfs(['inspect', manifest, '--json'])
      t.same(JSON.parse(inspect.stdout).largeAcls, ['/large/big-acl-file', '/large/big-default-dir'], 'extfs inspect names them')

      await t.test('extfs mount warns about the ACLs the kernel cannot pass; small ones and a 64 KiB xattr pass exactly', async (t) => {
        await withView(manifest, async (mnt, logFile) => {
          const warning = logLines(logFile).filter((l) => /ACL/.test(l.msg) && l.level === 40)
          t.equal(warning.length, 1, 'one warning line at mount')
          t.match(warning[0], { count: 2, files: ['/large/big-acl-file', '/large/big-default-dir'] }, 'with the count and the files')

          const huge = await run('getfattr', ['--absolute-names', '--only-values', '-n', 'user.huge', path.join(mnt, 'small', 'huge-xattr')], { binary: true })
          t.equal(huge.code, 0, `getfattr user.huge: ${huge.stderr}`)
          t.ok(huge.stdout.equals(hugeValue), 'the 64 KiB xattr is served byte for byte')
          const acl = await run('getfacl', ['-n', '-p', path.join(mnt, 'small', 'normal-acl')])
          t.equal(acl.stdout.replace(mnt, data), sourceAcl, 'a small ACL is served exactly')

          const big = await run('getfacl', ['-n', path.join(mnt, 'large', 'big-acl-file')])
          t.not(big.code, 0, 'getfacl of a large ACL fails')
          t.match(big.stderr, /Argument list too long/, 'with E2BIG, as the kernel turns it')
        })
      })

      await t.test('a shard view names only the files with large ACLs it shows', async (t) => {
        const named: string[] = []
        for (const shard of ['0/2', '1/2']) {
          await withView(manifest, async (mnt, logFile) => {
            const files = (logLines(logFile).find((l) => /ACL/.test(l.msg) && l.level === 40)?.files ?? []) as string[]
            const shown = []
            for (const f of ['/large/big-acl-file', '/large/big-default-dir']) if (await fsp.lstat(path.join(mnt, f)).then(() => true, () => false)) shown.push(f)
            t.same(files, shown, `shard ${shard}: names ${files.length}, shows ${shown.length}`)
            named.push(...files)
          }, ['--shard', shard])
        }
        t.same(named.sort(), ['/large/big-acl-file', '/large/big-default-dir'], 'the two shards name each once')
      })

      await t.test('a backup whose command asked for them fails naming them, though tar exits 0', async (t) => {
        const log = path.join(dir, 'backup-large.log')
        const out = path.join(dir, 'large.tar')
        const r = await extfs(['backup', manifest, '--log-file', log, '--', 'tar', '--acls', '-cpf', out, 'large'])
        t.match(r.stderr, /tar: .*big-acl-file: Warning/, 'tar itself only warns')
        t.equal(r.code, ExitCode.UnservedMetadata, `exit ${ExitCode.UnservedMetadata}: ${r.stderr}`)
        t.match(r.stderr, /extfs: .*2 file\(s\).*large\/big-acl-file.*large\/big-default-dir/, 'one line naming the files')
        const perFile = logLines(log).filter((l) => l.op === 'getxattr')
        t.same(perFile.map((l) => l.path).sort(), ['/large/big-acl-file', '/large/big-default-dir'], 'the view logs each file once')
      })

      await t.test('a backup of a tree without large ACLs exits 0', async (t) => {
        const r = await extfs(['backup', manifest, '--log-file', path.join(dir, 'backup-small.log'), '--', 'tar', '--acls', '--xattrs', '-cpf', path.join(dir, 'small.tar'), 'small'])
        t.equal(r.code, 0, `exit 0: ${r.stderr}`)
        t.equal(withoutProgress(r.stderr), '', 'nothing to say')
      })
    } finally {
      await release(manifest)
    }
  })
})

t.test('events C could not deliver (a burst while JS was busy) count as refusals: never judged clean', async (t) => {
  const dir = await scratchDir(t, 'extfs-lost-events-')
  await withLoopFs({ fs: 'xfs' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    const bigFile = path.join(data, 'big-acl-file')
    await fsp.writeFile(bigFile, 'many readers\n')
    await setLargeAcl(bigFile, NAMED, 'access', dir)
    const manifest = path.join(dir, 'lost.json')
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const image = loadImage(manifest, { deviceOverrides: new Map() })
      const mnt = path.join(dir, 'view')
      await fsp.mkdir(mnt)
      const engine = new NativeEngine(image.manifest, image.devices, image.config, pino({ level: 'silent' }))
      try {
        await engine.mount(mnt, { fsname: 'extfs:lost-events', allowOther: false })
        // spawnSync holds this (the JS) thread while the reader runs: each getxattr of the ACL is an
        // event C queues for JS, and the queue (1024) fills.
        const reader = spawnSync('python3', ['-c', `
import os, sys
for _ in range(3000):
    try: os.getxattr(sys.argv[1], 'system.posix_acl_access')
    except OSError: pass`, path.join(mnt, 'big-acl-file')])
        t.equal(reader.status, 0, `reader: ${reader.stderr}`)
      } finally {
        await engine.unmount()
        for (const d of image.devices) d.close()
      }
      const summary = engine.refusedRequests()
      t.ok(summary.count > 0, `lost events count as refusals (${summary.count})`)
      t.match(summary.first, /event\(s\) the view could not deliver/, 'and say so')
    } finally {
      await release(manifest)
    }
  })
})
