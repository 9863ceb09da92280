// Self-test of the e2e helpers: they must build every kind of file, see copies made by tar and rsync
// as equal, and report exactly what was changed when a copy is altered (an oracle that cannot fail
// proves nothing). Needs root, loop devices and the usual fs tools.
import t, { Test } from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, promises as fsp, readFileSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { run, runOk } from '../helpers/exec'
import { isMounted, loopBackingFile, registry, remountReadOnly, withLoopFs } from '../helpers/loopfs'
import { Population, populateEveryKind } from '../helpers/populate'
import { snapshotTree, diffTrees } from '../helpers/tree'
import { ddCompare, ddSha256, rsyncCopy, tarRoundTrip } from '../helpers/backup-tools'

const MS = { timePrecisionNs: 1_000_000 }
const MiB = 1024 * 1024
const used: Array<{ image: string; loopDevice: string; mountpoint: string; tmpdir: string }> = []
const isSocketPath = (p: string) => p === 'special/socket'

/** Does dir's filesystem take user xattrs and ACLs? (Copies must land somewhere that keeps them.) */
async function supportsXattrsAndAcls(dir: string): Promise<boolean> {
  const probe = path.join(dir, `.extfs-probe-${process.pid}`)
  await fsp.writeFile(probe, '')
  const ok =
    (await run('setfattr', ['-n', 'user.probe', '-v', '1', probe])).code === 0 &&
    (await run('setfacl', ['-m', 'u:1234:r', probe])).code === 0
  await fsp.rm(probe)
  return ok
}

/** Alter a copy in five independent ways; each must show up as exactly one difference. */
async function mutateAndExpectDiffs(t: Test, src: string, copy: string): Promise<void> {
  const before = await snapshotTree(copy, MS)
  // One byte of content; put the mtime back so only the hash differs.
  const f = path.join(copy, 'regular/f4097')
  const fh = await fsp.open(f, 'r+')
  const b = Buffer.alloc(1)
  await fh.read(b, 0, 1, 100)
  b[0] ^= 0x01
  await fh.write(b, 0, 1, 100)
  await fh.close()
  await runOk('touch', ['-h', '-r', path.join(src, 'regular/f4097'), f])
  await runOk('setfattr', ['-n', 'user.text', '-v', 'hello worle', path.join(copy, 'meta/xattr-file')])
  await fsp.chmod(path.join(copy, 'regular/f1'), 0o640)
  // -n: keep the mask, so the mode's group bits (which mirror it) stay the same.
  await runOk('setfacl', ['-n', '-m', 'u:1234:r-x', path.join(copy, 'meta/acl-file')])
  // Break one name out of the three-name hard link group (same bytes, mode, owner, time).
  const two = path.join(copy, 'links/b/two')
  await runOk('cp', ['-p', two, `${two}.new`])
  await fsp.rename(`${two}.new`, two)
  await runOk('touch', ['-h', '-r', path.join(src, 'links/b'), path.join(copy, 'links/b')])

  const after = await snapshotTree(copy, MS)
  const diffs = diffTrees(before, after)
  t.equal(diffs.length, 5, 'exactly five differences')
  t.match(diffs, [
    /^links\/b\/two: linkGroup "links\/a\/one" != \(absent\)$/,
    /^meta\/acl-file: acl ".*user:1234:rwx.*" != ".*user:1234:r-x.*"$/,
    /^meta\/xattr-file: xattr user\.text 0x68656c6c6f20776f726c64 != 0x68656c6c6f20776f726c65$/,
    /^regular\/f1: mode 0644 != 0640$/,
    /^regular\/f4097: sha256 [0-9a-f"]+ != [0-9a-f"]+$/,
  ])
  t.notOk(diffTrees(before, after).some((d) => d.includes('mtime')), 'restored mtimes are not reported')

  // A change below the precision is invisible at ms but visible at ns.
  const g = path.join(copy, 'regular/f0')
  const ns = (await fsp.lstat(g, { bigint: true })).mtimeNs
  const sub = ns % 1_000_000n
  const changed = ns - sub + ((sub + 1n) % 1_000_000n)
  await runOk('touch', ['-h', '-d', `@${changed / 1_000_000_000n}.${String(changed % 1_000_000_000n).padStart(9, '0')}`, g])
  t.same(diffTrees(after, await snapshotTree(copy, MS)), [], 'sub-ms change ignored at ms precision')
  const nsDiffs = diffTrees(await snapshotTree(src, { timePrecisionNs: 1 }), await snapshotTree(copy, { timePrecisionNs: 1 }), {
    ignorePaths: isSocketPath,
  })
  t.ok(nsDiffs.includes(`regular/f0: mtimeNs ${ns}ns != ${changed}ns`), 'sub-ms change reported at ns precision')
}

/** The layout cases the exporter must handle really are on disk as intended. */
async function checkAllocation(t: Test, root: string, pop: Population): Promise<void> {
  const allocated = async (rel: string) => Number((await fsp.lstat(path.join(root, rel))).blocks) * 512
  // Not "exactly the data": XFS keeps some speculative preallocation, as unwritten extents.
  t.ok((await allocated(pop.sparse[0])) < MiB, 'sparse file (4 MiB) is mostly holes')
  const frag = async (rel: string) => (await runOk('filefrag', ['-v', path.join(root, rel)])).stdout
  t.match(await frag(pop.preallocated.unwritten), /unwritten/, 'fallocate left an unwritten extent')
  t.match(await frag(pop.preallocated.partiallyWritten), /unwritten/, 'partial write kept unwritten parts')
  t.ok((await allocated(pop.preallocated.keepSize)) >= 2 * MiB, 'KEEP_SIZE blocks past EOF are allocated')
  t.equal((await fsp.lstat(path.join(root, pop.preallocated.keepSize))).size, 5000)
  t.match(await frag(pop.fragmented[0]), /([2-9]|\d\d+) extents? found/, 'fragmented file has several extents')
}

function record(ctx: { image: string; loopDevice: string; mountpoint: string; tmpdir: string }): void {
  used.push({ image: ctx.image, loopDevice: ctx.loopDevice, mountpoint: ctx.mountpoint, tmpdir: ctx.tmpdir })
}

const skip = process.getuid?.() !== 0 || !existsSync('/dev/loop-control') ? 'needs root and loop devices' : false

t.test('ext4 on a whole loop device: tar and rsync copies match, changes are caught', { skip }, async (t) => {
  await withLoopFs({ fs: 'ext4', sizeMiB: 256 }, async (ctx) => {
    record(ctx)
    t.equal(ctx.fsDevice, ctx.loopDevice)
    t.equal(ctx.partitionStartBytes, 0)
    const pop = await populateEveryKind(ctx.mountpoint, { big: true })
    t.comment(`fragmented file: ${(await run('filefrag', [path.join(ctx.mountpoint, pop.fragmented[0])])).stdout.trim()}`)
    const src = await snapshotTree(ctx.mountpoint, MS)
    t.equal(src.get(pop.symlinks.dangling)?.symlinkTarget, 'does/not/exist')
    t.equal(src.get(pop.blockDevices[0])?.rdev, '7:200')
    t.match(src.get(pop.acls.inherited[0])?.acl, /user:1234:rwx/, 'default ACL was inherited')
    t.equal(src.get(pop.oddModes.setuid)?.mode, 0o4755)
    t.equal(src.get(pop.hardLinks[0][2])?.linkGroup, 'links/a/one')
    t.equal(src.get(pop.big!)?.size, 64 * MiB)
    t.same(src.get(pop.xattrs[0])?.xattrs['user.empty'], '', 'empty xattr value kept')
    t.same(src.get(pop.xattrs[1])?.xattrs, { 'user.dir': Buffer.from('on a directory').toString('hex') })
    t.match(src.get(pop.acls.defaultAcl[0])?.acl, /default:user:1234:rwx/)
    t.same(src.get(pop.sockets[0])?.kind, 'socket')
    await checkAllocation(t, ctx.mountpoint, pop)

    // Copies go to /tmp when it keeps xattrs and ACLs (it is ext4 here), else onto the loop fs.
    const base = (await supportsXattrsAndAcls(os.tmpdir())) ? os.tmpdir() : ctx.tmpdir
    const out = await fsp.mkdtemp(path.join(base, 'extfs-helpers-copy-'))
    try {
      const tarred = path.join(out, 'tar')
      const tarResults = await tarRoundTrip(ctx.mountpoint, tarred)
      t.match(tarResults[0].stderr, /socket ignored/, 'GNU tar skips sockets')
      t.same(diffTrees(src, await snapshotTree(tarred, MS)), [`special/socket: only in first tree (socket)`])
      const synced = path.join(out, 'rsync')
      await rsyncCopy(ctx.mountpoint, synced)
      t.same(diffTrees(src, await snapshotTree(synced, MS)), [], 'rsync -aHAX copy is identical')
      const NS = { timePrecisionNs: 1 }
      t.same(diffTrees(await snapshotTree(ctx.mountpoint, NS), await snapshotTree(synced, NS)), [], '... even to the nanosecond')
      t.ok((await ddCompare(path.join(ctx.mountpoint, pop.big!), path.join(synced, pop.big!))).equal, 'dd sees equal bytes')
      const unequal = await ddCompare(path.join(ctx.mountpoint, 'regular/f4095'), path.join(ctx.mountpoint, 'regular/f4096'))
      t.notOk(unequal.equal, 'dd sees different files as different')
      await mutateAndExpectDiffs(t, ctx.mountpoint, synced)
    } finally {
      await fsp.rm(out, { recursive: true, force: true })
    }
  })
})

t.test('XFS on a GPT partition at 1 MiB: offsets, read-only remount, copies', { skip }, async (t) => {
  await withLoopFs({ fs: 'xfs', partition: 'gpt', sizeMiB: 400 }, async (ctx) => {
    record(ctx)
    t.equal(ctx.fsDevice, `${ctx.loopDevice}p1`)
    t.equal(ctx.partitionStartBytes, MiB)
    const srcDir = path.join(ctx.mountpoint, 'src')
    await fsp.mkdir(srcDir)
    const pop = await populateEveryKind(srcDir)
    const filefrag = await run('filefrag', [path.join(srcDir, pop.fragmented[0])])
    t.comment(`fragmented file: ${filefrag.stdout.trim()}`)
    await checkAllocation(t, srcDir, pop)
    const src = await snapshotTree(srcDir, MS)

    const tarred = path.join(ctx.mountpoint, 'copy-tar')
    await tarRoundTrip(srcDir, tarred)
    t.same(diffTrees(src, await snapshotTree(tarred, MS), { ignorePaths: isSocketPath }), [], 'tar copy matches (sockets aside)')
    const synced = path.join(ctx.mountpoint, 'copy-rsync')
    await rsyncCopy(srcDir, synced)
    t.same(diffTrees(src, await snapshotTree(synced, MS)), [], 'rsync copy matches')
    await mutateAndExpectDiffs(t, srcDir, tarred)

    // The partition's first MiB is the loop device's second: what the extent mapping must add.
    await remountReadOnly(ctx)
    const viaPartition = await ddSha256(ctx.fsDevice, { count: 8, iflag: ['direct'] })
    const viaDisk = await ddSha256(ctx.loopDevice, { skip: 1, count: 8, iflag: ['direct'] })
    t.equal(viaPartition.sha256, viaDisk.sha256, 'partition bytes = disk bytes + start offset')
    await t.rejects(fsp.writeFile(path.join(ctx.mountpoint, 'nope'), 'x'), { code: 'EROFS' })
  })
})

t.test('cleanup runs when the callback throws with the filesystem frozen (MBR partition)', { skip }, async (t) => {
  let seen: { image: string; loopDevice: string; mountpoint: string; tmpdir: string } | undefined
  await t.rejects(
    withLoopFs({ fs: 'ext4', partition: 'mbr', sizeMiB: 32 }, async (ctx) => {
      seen = ctx
      record(ctx)
      t.equal(ctx.partitionStartBytes, MiB)
      await fsp.writeFile(path.join(ctx.mountpoint, 'f'), 'x')
      await runOk('fsfreeze', ['-f', ctx.mountpoint])
      throw new Error('boom')
    }),
    { message: 'boom' },
  )
  t.ok(seen)
  t.notOk(isMounted(seen!.mountpoint), 'unmounted')
  t.not(loopBackingFile(seen!.loopDevice), seen!.image, 'loop device detached')
  t.notOk(existsSync(`${seen!.loopDevice}p1`) && loopBackingFile(seen!.loopDevice) === undefined, 'partition removed')
  t.notOk(existsSync(seen!.tmpdir), 'tmpdir removed')
})

t.test('SIGINT in a process holding a loop fs cleans it up', { skip }, async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'extfs-helpers-child-'))
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }))
  const script = path.join(dir, 'child.ts')
  const loopfs = path.resolve(__dirname, '../helpers/loopfs')
  await fsp.writeFile(
    script,
    `import { createLoopFs } from ${JSON.stringify(loopfs)}\n` +
      `createLoopFs({ fs: 'ext4', partition: 'gpt', sizeMiB: 32 }).then((c) => { console.log(JSON.stringify(c)); setInterval(() => {}, 1000) })\n`,
  )
  // Same node flags as this process, so the child loads TypeScript the way tap does.
  const child = spawn(process.execPath, [...process.execArgv, script], { stdio: ['ignore', 'pipe', 'inherit'] })
  const line = await new Promise<string>((resolve, reject) => {
    let buf = ''
    child.stdout.on('data', (b: Buffer) => {
      buf += b.toString()
      if (buf.includes('\n')) resolve(buf.split('\n')[0])
    })
    child.on('exit', (code) => reject(new Error(`child exited early (${code})`)))
  })
  const ctx = JSON.parse(line) as { image: string; loopDevice: string; mountpoint: string; tmpdir: string }
  record(ctx)
  t.ok(isMounted(ctx.mountpoint), 'child mounted its fs')
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)))
  child.kill('SIGINT')
  t.equal(await exited, 'SIGINT', 'child died of SIGINT (default action re-raised)')
  t.notOk(isMounted(ctx.mountpoint), 'unmounted')
  t.not(loopBackingFile(ctx.loopDevice), ctx.image, 'loop device detached')
  t.notOk(existsSync(ctx.tmpdir), 'tmpdir removed')
})

t.test('nothing of ours is left attached or mounted', { skip }, async (t) => {
  t.equal(registry.size, 0, 'registry empty')
  const attached = (await runOk('losetup', ['-a'])).stdout
  const mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')
  t.ok(used.length >= 4)
  for (const u of used) {
    t.notOk(attached.includes(u.tmpdir), `${u.image} not attached`)
    t.notOk(mountinfo.includes(u.mountpoint), `${u.mountpoint} not mounted`)
    t.notOk(existsSync(u.tmpdir), `${u.tmpdir} removed`)
  }
})
