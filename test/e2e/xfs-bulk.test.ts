// The XFS bulk mapper (native/export/xfs_bulk.c: XFS_IOC_BULKSTAT and FS_IOC_GETFSMAP) against the
// reference, the VFS walker: the same frozen tree exported with `--mapper bulk` (format 2) and with
// `--mapper vfs --format 1` must give the same manifest, inode for inode and field for field, and both
// views must show the source's tree (test/helpers/bulk-equivalence.ts, shared with ext4-bulk).
// Trees, on XFS with the reverse map (mkfs.xfs -m rmapbt=1; reflink=1 is the default): every kind
// (holes, unwritten extents, blocks preallocated past EOF, hard links, specials, xattrs, ACLs, odd
// modes), also in windows of 64 extents (many reverse-map sweeps), reflinked files (whole and in part), chattr flags, non-UTF-8 names, a 300-entry ACL, 64 KiB
// xattr values, xattrs on a symlink, long and short symlinks; a sparse file with data past 4 GiB and a
// file of 20,000 extents; directories in each of XFS's formats (shortform, block, leaf, node: 12,000
// entries); without the reverse map (extents by FIEMAP per file). Refusal: an inode of 300 names makes
// `--mapper auto` fall back to the walker (said once) and `--mapper bulk` fail in one line.
// Needs root, loop devices, xfsprogs, setfacl, setfattr, chattr, python3.
import t from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { runOk } from '../helpers/exec'
import { extfs, release, scratchDir, withoutProgress } from '../helpers/extfs'
import { populateEveryKind, seededBytes } from '../helpers/populate'
import { checkReadPast, equivalent, equivalentManifests, writePast4GiB } from '../helpers/bulk-equivalence'

const MiB = 1024 * 1024
const RMAP = ['-m', 'rmapbt=1']
const py = (code: string, ...args: string[]) => runOk('python3', ['-c', code, ...args], { timeoutMs: 300_000 })
// The walker's export writes format 1 by default: the reference is `--mapper vfs --format 1`.
const XFS = { scratchPrefix: 'extfs-xfs-bulk-', views: true }

t.test('XFS with rmapbt: every kind, reflinks, flags, byte names, ACLs, big xattrs, symlinks', async (t) => {
  await withLoopFs({ fs: 'xfs', sizeMiB: 400, mkfsArgs: RMAP }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    await populateEveryKind(tree)
    // Reflinks: a whole clone, and a clone of part of a file into the middle of another (the shared
    // range cuts FIEMAP's extents where the reverse map has one record).
    await fsp.writeFile(path.join(tree, 'original'), seededBytes(11, 3 * MiB + 5))
    await runOk('cp', ['--reflink=always', path.join(tree, 'original'), path.join(tree, 'clone')])
    await fsp.writeFile(path.join(tree, 'patchwork'), seededBytes(12, 2 * MiB))
    await runOk('xfs_io', ['-c', `reflink ${path.join(tree, 'original')} ${MiB} ${512 * 1024} ${256 * 1024}`, path.join(tree, 'patchwork')])
    await fsp.writeFile(path.join(tree, 'flags'), 'chattr\n')
    await runOk('chattr', ['+d', '+A', '+S', path.join(tree, 'flags')])
    await fsp.mkdir(path.join(tree, 'flagged-dir'))
    await runOk('chattr', ['+d', path.join(tree, 'flagged-dir')])
    await py('import os,sys\nd=sys.argv[1].encode()\nopen(d+b"/caf\\xe9-latin1","wb").write(b"x")\nos.setxattr(d+b"/caf\\xe9-latin1",b"user.caf\\xe9",b"v")\nos.symlink(b"caf\\xe9-latin1",d+b"/link-\\xff")', tree)
    await fsp.writeFile(path.join(tree, 'big-acl'), 'acl\n')
    await fsp.writeFile(path.join(tree, 'acl.spec'), Array.from({ length: 300 }, (_, i) => `u:${30000 + i}:r--`).join('\n') + '\n')
    await runOk('setfacl', ['-M', path.join(tree, 'acl.spec'), path.join(tree, 'big-acl')])
    await runOk('setfacl', ['-d', '-m', 'g:4242:rwx', path.join(tree, 'flagged-dir')])
    await fsp.writeFile(path.join(tree, 'big-xattrs'), 'two big values\n')
    await py('import os,sys\nos.setxattr(sys.argv[1],"user.a",bytes(range(256))*256)\nos.setxattr(sys.argv[1],"trusted.b",b"b"*61440)', path.join(tree, 'big-xattrs'))
    await fsp.symlink('s'.repeat(1000), path.join(tree, 'long-link'))
    await fsp.symlink('short', path.join(tree, 'short-link'))
    await runOk('setfattr', ['-h', '-n', 'trusted.on-a-link', '-v', 'yes', path.join(tree, 'short-link')])
    await runOk('mknod', [path.join(tree, 'wide-dev'), 'c', '511', '262143']) // XFS keeps sysv_encode_dev: major < 512, minor < 2^18
    for (const [name, when] of [['pre-1970', '1901-12-14 20:45:53.000000001'], ['2030', '2030-06-01 12:00:00.123456789']]) {
      await fsp.writeFile(path.join(tree, `time-${name}`), name)
      await runOk('touch', ['-h', '-d', when!, path.join(tree, `time-${name}`)])
    }
    await equivalent(t, lfs, tree, XFS)
    // Windows of 64 extents: many GETFSMAP sweeps, each keeping the lower inode numbers when it fills.
    await equivalent(t, lfs, tree, { ...XFS, views: false, bulkEnv: { EXTFS_XFS_WINDOW_EXTENTS: '64' } })
  })
})

t.test('XFS with rmapbt: data past 4 GiB in a sparse file, a file of 20,000 extents', async (t) => {
  await withLoopFs({ fs: 'xfs', sizeMiB: 400, mkfsArgs: RMAP }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    const { data, at } = await writePast4GiB(tree, 'past-4GiB')
    // One byte in every other 4 KiB block: 20,000 extents, a block-map btree of several levels.
    await py('import os,sys\nfd=os.open(sys.argv[1],os.O_CREAT|os.O_WRONLY)\nfor i in range(20000): os.pwrite(fd,b"%c"%(65+i%26),8192*i+7)\nos.close(fd)', path.join(tree, 'holey'))
    // The views are not hashed whole (5 GiB of zeros through FUSE): the manifests must agree, and the
    // bulk view must return the bytes past 4 GiB and the 20,000-extent file.
    await equivalentManifests(t, lfs, tree, 'extfs-xfs-bulk-', async (mnt) => {
      await checkReadPast(t, mnt, 'past-4GiB', data, at)
      t.ok((await fsp.readFile(path.join(mnt, 'holey'))).equals(await fsp.readFile(path.join(tree, 'holey'))), 'the 20,000-extent file')
    })
  })
})

t.test('XFS with rmapbt: shortform, block, leaf and node directories (12,000 entries)', async (t) => {
  await withLoopFs({ fs: 'xfs', sizeMiB: 400, mkfsArgs: RMAP }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    const sizes: [string, number][] = [['shortform', 3], ['block', 60], ['leaf', 600], ['node', 12000]]
    for (const [name, n] of sizes) {
      await fsp.mkdir(path.join(tree, name), { recursive: true })
      await py('import os,sys\nd,n=sys.argv[1],int(sys.argv[2])\nfor i in range(n): os.close(os.open("%s/entry-with-a-longer-name-%06d"%(d,i),os.O_CREAT|os.O_WRONLY,0o644))', path.join(tree, name), String(n))
    }
    await equivalent(t, lfs, tree, XFS)
  })
})

t.test('XFS without the reverse map: FIEMAP per file, the same manifest', async (t) => {
  await withLoopFs({ fs: 'xfs', sizeMiB: 400, mkfsArgs: ['-m', 'rmapbt=0'] }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    await populateEveryKind(tree)
    await fsp.writeFile(path.join(tree, 'original'), seededBytes(11, 3 * MiB + 5))
    await runOk('cp', ['--reflink=always', path.join(tree, 'original'), path.join(tree, 'clone')])
    await equivalent(t, lfs, tree, XFS)
  })
})

t.test('refusals: 300 names of one inode (auto falls back, said once; bulk fails in one line), a clone set', async (t) => {
  const dir = await scratchDir(t, 'extfs-xfs-bulk-refuse-')
  await withLoopFs({ fs: 'xfs', mkfsArgs: RMAP }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(path.join(tree, 'many-links'), { recursive: true })
    await fsp.writeFile(path.join(tree, 'many-links', 'l0'), 'linked\n')
    await py('import os,sys\nfor i in range(1,300): os.link(sys.argv[1]+"/l0", sys.argv[1]+"/l%d"%i)', path.join(tree, 'many-links'))
    const m = path.join(dir, 'refused.m')
    const bulk = await extfs(['export', tree, '--output', m, '--mapper', 'bulk'])
    await release(m)
    t.not(bulk.code, 0, '--mapper bulk fails')
    t.match(bulk.stderr, /over 254 names/, 'naming why')
    t.equal(withoutProgress(bulk.stderr).trim().split('\n').length, 1, 'in one line')
    const auto = await extfs(['export', tree, '--output', m, '--log-level', 'warn', '--format', '2'])
    await release(m)
    t.equal(auto.code, 0, `auto falls back to the walker: ${auto.stderr}`)
    t.equal(auto.stderr.match(/bulk mapper declined/g)?.length, 1, 'said once')
    const clones = await extfs(['export', tree, '--output', m, '--mapper', 'bulk', '--frozen-image', 'snapshot'])
    await release(m)
    t.not(clones.code, 0, 'a clone set is not for the bulk mapper')
    t.match(clones.stderr, /clone set is made file by file/)
  })
})
