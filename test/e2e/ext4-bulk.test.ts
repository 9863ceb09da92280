// The ext4 bulk mapper (native/export/ext4.c) against the reference, the VFS walker: the same frozen
// tree exported both ways must give the same manifest, inode for inode and field for field (times to
// the nanosecond, nlink, blocks, attrs, xattrs and ACL bytes, carried content, extents), and both
// views must show the source's tree. Then what it must refuse: an entry naming an unused inode, an
// encrypted directory (falls back to the walker, said once; --mapper bulk fails in one line) and a
// mount point inside the tree.
import t, { type Test } from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { createNestedFs, destroyNestedFs } from '../helpers/nested-loop'
import { runOk } from '../helpers/exec'
import { extfs, release, scratchDir, withoutProgress } from '../helpers/extfs'
import { checkReadPast, equivalent, equivalentManifests, writePast4GiB } from '../helpers/bulk-equivalence'
import { populateEveryKind, seededBytes, writeInterleaved } from '../helpers/populate'
import { readCheckedManifest } from '../../src/manifest/io'

const KiB = 1024
const MiB = 1024 * KiB
const py = (code: string, ...args: string[]) => runOk('python3', ['-c', code, ...args], { timeoutMs: 300_000 })

/** Times the VFS walker and the view carry to the nanosecond, before 1970 and past 2038 (the extra epoch bits). */
async function oddTimes(tree: string): Promise<void> {
  const times = [['pre-1970', '1901-12-14 20:45:53.000000001'], ['1969', '1969-12-31 23:59:59.999999999'], ['2300', '2300-06-01 12:00:00.123456789']]
  for (const [name, when] of times) {
    await fsp.writeFile(path.join(tree, `time-${name}`), name)
    await runOk('touch', ['-h', '-d', when!, path.join(tree, `time-${name}`)])
  }
}

t.test('ext4 default: every kind, odd times, byte names, large ACL, 300 hard links', async (t) => {
  await withLoopFs({ fs: 'ext4', sizeMiB: 256 }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    await populateEveryKind(tree)
    await py('import os,sys\nd=sys.argv[1].encode()\nopen(d+b"/caf\\xe9-latin1","wb").write(b"x")\nos.setxattr(d+b"/caf\\xe9-latin1",b"user.caf\\xe9",b"v")\nos.symlink(b"caf\\xe9-latin1",d+b"/link-\\xff")', tree)
    await fsp.writeFile(path.join(tree, 'big-acl'), 'acl\n')
    await fsp.writeFile(path.join(tree, 'acl.spec'), Array.from({ length: 300 }, (_, i) => `u:${30000 + i}:r--`).join('\n') + '\n')
    await runOk('setfacl', ['-M', path.join(tree, 'acl.spec'), path.join(tree, 'big-acl')])
    await runOk('chattr', ['+d', path.join(tree, 'big-acl')]) // FS_NODUMP_FL next to extents' e
    // Over 255 names: the mapper's one-byte name counter spills.
    await fsp.mkdir(path.join(tree, 'many-links'))
    await fsp.writeFile(path.join(tree, 'many-links', 'l0'), 'linked\n')
    await py('import os,sys\nfor i in range(1,300): os.link(sys.argv[1]+"/l0", sys.argv[1]+"/l%d"%i)', path.join(tree, 'many-links'))
    await runOk('chown', ['4000000000:4000000001', path.join(tree, 'many-links', 'l0')]) // i_uid_high
    await runOk('mknod', [path.join(tree, 'wide-dev'), 'c', '4095', '1048575']) // new_encode_dev: i_block[1]
    await oddTimes(tree)
    await equivalent(t, lfs, tree)
  })
})

t.test('ext4: data past 4 GiB in a sparse file', async (t) => {
  await withLoopFs({ fs: 'ext4' }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    const { data, at } = await writePast4GiB(tree, 'past-4GiB')
    // The views are not hashed whole (5 GiB of zeros through FUSE): the manifests must agree, and
    // the bulk view must return the bytes past 4 GiB.
    await equivalentManifests(t, lfs, tree, 'extfs-ext4-bulk-', (mnt) => checkReadPast(t, mnt, 'past-4GiB', data, at))
  })
})

t.test('ext4 in a fragmented VM image on XFS, --through-loop: a device map of many pieces', async (t) => {
  await withLoopFs({ fs: 'xfs' }, async (host) => {
    // The image written in 1 MiB pieces alternating with another file: its loop device maps to the
    // XFS disk in many pieces, and a file's extent may cross from one to the next.
    const guest = await createNestedFs(path.join(host.mountpoint, 'guest.img'), { sizeMiB: 64, fragmented: true })
    try {
      const tree = path.join(guest.mountpoint, 'tree')
      await fsp.mkdir(tree)
      for (const size of [1, 5000, 3 * MiB + 5]) await fsp.writeFile(path.join(tree, `f${size}`), seededBytes(size + 3, size))
      await equivalent(t, guest, tree, { views: true, args: ['--through-loop'] })
    } finally {
      await destroyNestedFs(guest)
    }
  })
})

t.test('ext4 -O inline_data: inline files, directories and symlinks', async (t) => {
  // mke2fs -d writes through libext2fs, which (unlike the kernel) makes symlinks of 60+ bytes inline.
  const seed = await scratchDir(t, 'extfs-ext4-seed-')
  await fsp.mkdir(path.join(seed, 'tree', 'seeded'), { recursive: true })
  await fsp.symlink('i'.repeat(120), path.join(seed, 'tree', 'seeded', 'inline-link'))
  await fsp.writeFile(path.join(seed, 'tree', 'seeded', 'small'), 'seeded by mke2fs\n')
  await withLoopFs({ fs: 'ext4', mkfsArgs: ['-O', 'inline_data', '-I', '512', '-d', seed] }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    for (const size of [0, 1, 59, 60, 61, 150, 300, 4000]) await fsp.writeFile(path.join(tree, `f${size}`), seededBytes(size, size))
    await fsp.mkdir(path.join(tree, 'small-dir'))
    await fsp.writeFile(path.join(tree, 'small-dir', 'a'), 'a')
    await fsp.symlink('x'.repeat(100), path.join(tree, 'long-link'))
    await fsp.symlink('short', path.join(tree, 'short-link'))
    await runOk('setfattr', ['-n', 'user.note', '-v', 'beside inline data', path.join(tree, 'f59')])
    await equivalent(t, lfs, tree)
  })
})

t.test('ext4 -O ^extent: indirect block maps', async (t) => {
  await withLoopFs({ fs: 'ext4', mkfsArgs: ['-O', '^extent,^64bit'] }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    // No fallocate without extents: what populateEveryKind makes but the preallocated files.
    for (const size of [0, 1, 4096, 12 * 4096 + 1, 5 * MiB + 3]) await fsp.writeFile(path.join(tree, `f${size}`), seededBytes(size + 7, size))
    const sparse = await fsp.open(path.join(tree, 'sparse'), 'w')
    await sparse.write(seededBytes(1, 5000), 0, 5000, 3 * MiB) // in the double-indirect range
    await sparse.truncate(6 * MiB)
    await sparse.close()
    await writeInterleaved([{ file: path.join(tree, 'frag-a'), seed: 1 }, { file: path.join(tree, 'frag-b'), seed: 2 }], 16, 8192)
    await fsp.link(path.join(tree, 'f1'), path.join(tree, 'f1-link'))
    await fsp.symlink('s'.repeat(300), path.join(tree, 'slow-link'))
    await fsp.symlink('fast', path.join(tree, 'fast-link'))
    await runOk('mknod', [path.join(tree, 'char'), 'c', '1', '3'])
    await equivalent(t, lfs, tree)
  })
})

t.test('ext4 1 KiB blocks: a file of 20,000 extents', async (t) => {
  await withLoopFs({ fs: 'ext4', mkfsArgs: ['-b', '1024'] }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    // One byte in every other 1 KiB block: 20,000 extents, a tree of extent blocks.
    await py('import os,sys\nfd=os.open(sys.argv[1],os.O_CREAT|os.O_WRONLY)\nfor i in range(20000): os.pwrite(fd,b"%c"%(65+i%26),2048*i+7)\nos.close(fd)', path.join(tree, 'holey'))
    for (const size of [0, 1023, 1024, 1025, 70000]) await fsp.writeFile(path.join(tree, `f${size}`), seededBytes(size, size))
    await equivalent(t, lfs, tree)
  })
})

t.test('ext4 -O bigalloc: blocks counted in clusters', async (t) => {
  await withLoopFs({ fs: 'ext4', mkfsArgs: ['-O', 'bigalloc', '-C', '65536'] }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    for (const size of [0, 1, 4096, 70000, 200000]) await fsp.writeFile(path.join(tree, `f${size}`), seededBytes(size + 1, size))
    await fsp.symlink('t'.repeat(200), path.join(tree, 'slow-link'))
    await runOk('setfattr', ['-n', 'user.blocky', '-v', `0x${seededBytes(3, 3000).toString('hex')}`, path.join(tree, 'f1')])
    await equivalent(t, lfs, tree)
  })
})

t.test('ext4 -O ea_inode: 60 KiB xattr values in their own inodes', async (t) => {
  await withLoopFs({ fs: 'ext4', mkfsArgs: ['-O', 'ea_inode'] }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    await fsp.writeFile(path.join(tree, 'big-xattrs'), 'two big values\n')
    await py('import os,sys\nos.setxattr(sys.argv[1],"user.a",bytes(range(256))*240)\nos.setxattr(sys.argv[1],"user.b",b"b"*61440)', path.join(tree, 'big-xattrs'))
    await equivalent(t, lfs, tree)
  })
})

t.test('ext4: a directory of 100,000 entries (htree)', async (t) => {
  await withLoopFs({ fs: 'ext4', sizeMiB: 256, mkfsArgs: ['-N', '140000'] }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(path.join(tree, 'big'), { recursive: true })
    await py('import os,sys\nd=sys.argv[1]\nfor i in range(100000): os.close(os.open("%s/entry-%06d"%(d,i),os.O_CREAT|os.O_WRONLY,0o644))', path.join(tree, 'big'))
    // The manifests, every entry and inode compared, are the check here: 100,000 lstats through
    // two views would triple the test's time and add nothing the other trees do not show.
    await equivalent(t, lfs, tree, { views: false })
  })
})

/**
 * An encrypted directory (fscrypt v2 policy, key added by ioctl): the blocks hold ciphertext names.
 * Empty, so that the walker (which cannot map encrypted files either) exports it.
 */
const ENCRYPT_DIR = `
import fcntl, os, struct, sys
d = sys.argv[1]
os.mkdir(d)
fd = os.open(os.path.dirname(d), os.O_RDONLY)
arg = bytearray(struct.pack('<II32sII32x', 2, 0, b'', 64, 0) + os.urandom(64))
fcntl.ioctl(fd, 0xC0506617, arg)  # FS_IOC_ADD_ENCRYPTION_KEY: the kernel fills in the key identifier
dfd = os.open(d, os.O_RDONLY)
fcntl.ioctl(dfd, 0x800C6613, struct.pack('<BBBBBxxx16s', 2, 1, 4, 0, 0, bytes(arg[8:24])))  # FS_IOC_SET_ENCRYPTION_POLICY v2
`

t.test('refusals: an entry naming an unused inode, an encrypted directory, a mount point inside the tree', async (t) => {
  const dir = await scratchDir(t, 'extfs-ext4-bulk-refuse-')
  await withLoopFs({ fs: 'ext4', mkfsArgs: ['-O', 'encrypt'] }, async (lfs) => {
    const tree = path.join(lfs.mountpoint, 'tree')
    await fsp.mkdir(tree)
    await fsp.writeFile(path.join(tree, 'plain'), 'p\n')
    const m = path.join(dir, 'refused.m')
    // An entry naming an inode not in use: its inode cleared with debugfs on the unmounted filesystem.
    await fsp.writeFile(path.join(tree, 'ghost'), 'g\n')
    await runOk('umount', [lfs.mountpoint])
    await runOk('debugfs', ['-w', '-R', 'clri tree/ghost', lfs.fsDevice])
    await runOk('mount', [lfs.fsDevice, lfs.mountpoint])
    const ghost = await extfs(['export', tree, '--output', m, '--mapper', 'bulk'])
    await release(m)
    t.not(ghost.code, 0, 'an entry naming an unused inode: --mapper bulk fails')
    t.match(ghost.stderr, /an entry names inode \d+, which is not in use/)
    await runOk('umount', [lfs.mountpoint])
    await runOk('debugfs', ['-w', '-R', 'unlink tree/ghost', lfs.fsDevice])
    await runOk('mount', [lfs.fsDevice, lfs.mountpoint])

    await py(ENCRYPT_DIR, path.join(tree, 'sealed'))
    const bulk = await extfs(['export', tree, '--output', m, '--mapper', 'bulk'])
    await release(m)
    t.not(bulk.code, 0, '--mapper bulk fails')
    t.match(bulk.stderr, /encrypted/, 'naming why')
    t.equal(withoutProgress(bulk.stderr).trim().split('\n').length, 1, 'in one line')
    const auto = await extfs(['export', tree, '--output', m, '--log-level', 'warn'])
    await release(m)
    t.equal(auto.code, 0, `auto falls back to the walker: ${auto.stderr}`)
    t.equal(auto.stderr.match(/bulk mapper declined/g)?.length, 1, 'said once')
    const v1 = readCheckedManifest(m)
    t.equal(v1.version, 1, 'the walker wrote format 1')
    const asV2 = await extfs(['export', tree, '--output', m, '--mapper', 'vfs', '--format', '2'])
    await release(m)
    t.equal(asV2.code, 0, `the walker writes format 2 when asked: ${asV2.stderr}`)
    const v2 = readCheckedManifest(m)
    t.same({ version: v2.version, inodes: v2.inodes }, { version: 2, inodes: v1.inodes }, 'the same inodes in format 2')
    const both = await extfs(['export', tree, '--output', m, '--mapper', 'bulk', '--format', '1'])
    t.not(both.code, 0, '--mapper bulk --format 1 is refused before anything is frozen')
    t.match(both.stderr, /writes manifest format 2 only/)

    await fsp.mkdir(path.join(tree, 'mnt'))
    await runOk('mount', ['-t', 'tmpfs', 'tmpfs', path.join(tree, 'mnt')])
    try {
      const r = await extfs(['export', tree, '--output', m, '--mapper', 'bulk'])
      t.not(r.code, 0, 'a mount point inside the tree: --mapper bulk fails')
      t.match(r.stderr, /mount point inside the exported tree/)
    } finally {
      await runOk('umount', [path.join(tree, 'mnt')])
    }
  })
})
