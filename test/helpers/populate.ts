// Builds a tree with every kind of file and metadata a backup through the view must reproduce.
// Content is seeded pseudo-random so failures reproduce and copies are comparable by hash.
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { runOk } from './exec'

/** Paths relative to the populated root, by category (an entry may appear in several). */
export interface Population {
  regular: string[]
  sparse: string[]
  /** `fallocate -l` (unwritten, inside size), partially written inside it, and KEEP_SIZE past EOF. */
  preallocated: { unwritten: string; partiallyWritten: string; keepSize: string }
  fragmented: string[]
  /** Each inner list is one inode's names. */
  hardLinks: string[][]
  symlinks: { relative: string; absolute: string; dangling: string }
  fifos: string[]
  charDevices: string[]
  blockDevices: string[]
  sockets: string[]
  xattrs: string[]
  acls: { access: string[]; defaultAcl: string[]; inherited: string[] }
  oddModes: { setuid: string; sticky: string; mode000: string; setgidDir: string }
  nonRootOwned: string[]
  deepFile: string
  unicode: string[]
  /** Entries given times with nanoseconds (all of them, in fact; listed for tests that pick some). */
  timed: string[]
  big?: string
}

/** Deterministic bytes (xorshift32), so the same seed yields the same file everywhere. */
export function seededBytes(seed: number, length: number): Buffer {
  const buf = Buffer.alloc(length)
  let x = seed >>> 0 || 0x9e3779b9
  let i = 0
  for (; i + 4 <= length; i += 4) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    buf.writeUInt32LE(x, i)
  }
  for (; i < length; i++) buf[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24
  return buf
}

/** Write files in alternating fsync'd chunks so their extents interleave (xfs_fsr then has work). */
export async function writeInterleaved(files: { file: string; seed: number }[], chunks: number, chunk: number): Promise<void> {
  const handles = await Promise.all(files.map((f) => fsp.open(f.file, 'w')))
  for (let i = 0; i < chunks; i++) {
    for (const [j, fh] of handles.entries()) {
      await fh.write(seededBytes(files[j]!.seed * 1000 + i, chunk), 0, chunk, i * chunk)
      await fh.sync()
    }
  }
  await Promise.all(handles.map((fh) => fh.close()))
}

const MiB = 1024 * 1024

export async function populateEveryKind(root: string, opts: { big?: boolean } = {}): Promise<Population> {
  const abs = (rel: string) => path.join(root, rel)
  const mkdir = (rel: string) => fsp.mkdir(abs(rel), { recursive: true })
  const write = (rel: string, data: Buffer | string) => fsp.writeFile(abs(rel), data)
  for (const d of ['regular', 'sparse', 'prealloc', 'frag', 'links/a', 'links/b/c', 'sym', 'special', 'meta', 'modes'])
    await mkdir(d)

  // Regular files around the 4 KiB block boundary, and one a few bytes past a MiB.
  const regular: string[] = []
  for (const [i, size] of [0, 1, 4095, 4096, 4097, MiB + 3].entries()) {
    const rel = `regular/f${size}`
    await write(rel, seededBytes(1000 + i, size))
    regular.push(rel)
  }

  // Holes at the start, in the middle and at the end (size set past the last data by truncate).
  const sparse = 'sparse/holes'
  {
    const fh = await fsp.open(abs(sparse), 'w')
    await fh.write(seededBytes(2001, 8192), 0, 8192, 256 * 1024)
    await fh.write(seededBytes(2002, 5000), 0, 5000, 2 * MiB + 100) // unaligned on purpose
    await fh.truncate(4 * MiB)
    await fh.close()
  }

  const unwritten = 'prealloc/unwritten'
  await runOk('fallocate', ['-l', '1M', abs(unwritten)])
  const partiallyWritten = 'prealloc/partial'
  await runOk('fallocate', ['-l', '1M', abs(partiallyWritten)])
  {
    const fh = await fsp.open(abs(partiallyWritten), 'r+')
    await fh.write(seededBytes(3001, 12288), 0, 12288, 300 * 1024 + 17)
    await fh.close()
  }
  const keepSize = 'prealloc/keepsize'
  await write(keepSize, seededBytes(3002, 5000))
  await runOk('fallocate', ['-n', '-l', '2M', abs(keepSize)]) // blocks past EOF the view must not show

  // Two files written in alternating fsync'd chunks so their extents interleave.
  const fragmented = ['frag/one', 'frag/two']
  {
    const handles = await Promise.all(fragmented.map((rel) => fsp.open(abs(rel), 'w')))
    const chunk = 64 * 1024
    for (let i = 0; i < 48; i++) {
      for (const [j, fh] of handles.entries()) {
        await fh.write(seededBytes(4000 + i * 2 + j, chunk), 0, chunk, i * chunk)
        await fh.sync()
      }
    }
    await Promise.all(handles.map((fh) => fh.close()))
  }

  // One inode, three names in different directories; plus a pair in one directory.
  const hardLinks = [['links/a/one', 'links/b/two', 'links/b/c/three'], ['links/pair-1', 'links/pair-2']]
  await write(hardLinks[0][0], seededBytes(5001, 10000))
  await fsp.link(abs(hardLinks[0][0]), abs(hardLinks[0][1]))
  await fsp.link(abs(hardLinks[0][0]), abs(hardLinks[0][2]))
  await write(hardLinks[1][0], 'pair\n')
  await fsp.link(abs(hardLinks[1][0]), abs(hardLinks[1][1]))

  const symlinks = { relative: 'sym/relative', absolute: 'sym/absolute', dangling: 'sym/dangling' }
  await fsp.symlink('../regular/f4096', abs(symlinks.relative))
  await fsp.symlink('/etc/hostname', abs(symlinks.absolute))
  await fsp.symlink('does/not/exist', abs(symlinks.dangling))

  const fifos = ['special/fifo']
  await runOk('mkfifo', [abs(fifos[0])])
  const charDevices = ['special/null-c-1-3']
  await runOk('mknod', [abs(charDevices[0]), 'c', '1', '3'])
  const blockDevices = ['special/loop-b-7-200']
  await runOk('mknod', [abs(blockDevices[0]), 'b', '7', '200'])
  // Binding creates the socket inode; it stays on disk after the process exits.
  const sockets = ['special/socket']
  await runOk('python3', ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])', abs(sockets[0])])

  // All xattrs of an inode must fit in one fs block on ext4 (no ea_inode), hence 2000 bytes at most.
  // user.* xattrs are only allowed on regular files and directories (not on symlinks or specials).
  const xattrs = ['meta/xattr-file', 'meta/xattr-dir']
  await write(xattrs[0], 'has xattrs\n')
  await mkdir(xattrs[1])
  await runOk('setfattr', ['-n', 'user.text', '-v', 'hello world', abs(xattrs[0])])
  await runOk('setfattr', ['-n', 'user.binary', '-v', '0x00ff10807f', abs(xattrs[0])])
  await runOk('setfattr', ['-n', 'user.empty', abs(xattrs[0])])
  await runOk('setfattr', ['-n', 'user.big', '-v', `0x${seededBytes(6001, 2000).toString('hex')}`, abs(xattrs[0])])
  await runOk('setfattr', ['-n', 'user.dir', '-v', 'on a directory', abs(xattrs[1])])

  // An access ACL on a file; a default ACL on a directory, and a file created under it inherits.
  const acls = { access: ['meta/acl-file'], defaultAcl: ['meta/acl-dir'], inherited: ['meta/acl-dir/inherits'] }
  await write(acls.access[0], 'acl\n')
  await runOk('setfacl', ['-m', 'u:1234:rwx,g:5678:r-x,m::rwx', abs(acls.access[0])])
  await mkdir(acls.defaultAcl[0])
  await runOk('setfacl', ['-d', '-m', 'u:1234:rwx,g:5678:r-x', abs(acls.defaultAcl[0])])
  await write(acls.inherited[0], 'inherited acl\n')

  // Owners before modes: chown clears setuid.
  const nonRootOwned = ['meta/owned', 'meta/owned-dir', 'meta/owned-link', 'modes/setuid']
  await write(nonRootOwned[0], 'owned\n')
  await mkdir(nonRootOwned[1])
  await fsp.symlink('owned', abs(nonRootOwned[2]))
  await write(nonRootOwned[3], '#!/bin/sh\n')
  for (const rel of nonRootOwned) await runOk('chown', ['-h', '1234:5678', abs(rel)])

  const oddModes = { setuid: 'modes/setuid', sticky: 'modes/sticky', mode000: 'modes/mode000', setgidDir: 'modes/setgid' }
  await mkdir(oddModes.sticky)
  await mkdir(oddModes.setgidDir)
  await write(oddModes.mode000, 'nobody may read me (except root)\n')
  await fsp.chmod(abs(oddModes.setuid), 0o4755)
  await fsp.chmod(abs(oddModes.sticky), 0o1777)
  await fsp.chmod(abs(oddModes.mode000), 0o000)
  await fsp.chmod(abs(oddModes.setgidDir), 0o2750)

  const deepDir = Array.from({ length: 24 }, (_, i) => `d${i}`).join('/')
  await mkdir(deepDir)
  const deepFile = `${deepDir}/leaf`
  await write(deepFile, 'deep\n')

  const unicode = ['名前 with spaces', '名前 with spaces/ünïcødé ☃ file.txt']
  await mkdir(unicode[0])
  await write(unicode[1], 'unicode\n')

  let big: string | undefined
  if (opts.big) {
    big = 'big-64MiB'
    const fh = await fsp.open(abs(big), 'w')
    for (let i = 0; i < 64; i++) await fh.write(seededBytes(7000 + i, MiB), 0, MiB, i * MiB)
    await fh.close()
  }

  const timed = await setTimes(root)
  return {
    regular, sparse: [sparse], preallocated: { unwritten, partiallyWritten, keepSize }, fragmented, hardLinks, symlinks,
    fifos, charDevices, blockDevices, sockets, xattrs, acls, oddModes, nonRootOwned, deepFile, unicode, timed, big,
  }
}

/**
 * Give every entry (root included) distinct times with nanoseconds, files first and directories
 * deepest first, since creating or linking an entry changes its parent's mtime. The fractions include
 * .999999999 and .000000001 so a view that rounds instead of truncating shows up.
 */
async function setTimes(root: string): Promise<string[]> {
  const entries: string[] = []
  const walk = async (rel: string): Promise<void> => {
    for (const d of await fsp.readdir(path.join(root, rel), { withFileTypes: true })) {
      const child = rel ? `${rel}/${d.name}` : d.name
      entries.push(child)
      if (d.isDirectory()) await walk(child)
    }
  }
  await walk('')
  const isDir = async (rel: string) => (await fsp.lstat(path.join(root, rel))).isDirectory()
  const depth = (rel: string) => (rel === '' ? -1 : rel.split('/').length)
  const files: string[] = []
  const dirs: string[] = ['']
  for (const e of entries) ((await isDir(e)) ? dirs : files).push(e)
  dirs.sort((a, b) => depth(b) - depth(a))
  const fractions = ['123456789', '999999999', '000000001', '500000000', '000999999']
  let n = 0
  for (const rel of [...files, ...dirs]) {
    const stamp = `2021-03-04 05:${String(6 + (n % 50)).padStart(2, '0')}:07.${fractions[n % fractions.length]}`
    n++
    // -h: set the link's own times and never open FIFOs or devices.
    await runOk('touch', ['-h', '-d', stamp, path.join(root, rel) || root])
  }
  return [...files, ...dirs].map((rel) => rel || '.')
}

/** Sizes the mixed files cycle through: empty, around a 4 KiB block, tens of KiB. */
const MIXED_SIZES = [0, 1, 100, 4095, 4096, 4097, 20_000, 65_543]

/**
 * `count` regular files of mixed sizes (seeded content) spread over ten directories under `root/mixed`,
 * the eighth of 1.5 MiB; their paths relative to root.
 */
export async function populateMixedSizes(root: string, count: number): Promise<string[]> {
  const files: string[] = []
  for (let i = 0; i < count; i++) {
    const rel = `mixed/d${i % 10}/f${i}`
    const size = i === 7 ? 1.5 * MiB : MIXED_SIZES[i % MIXED_SIZES.length]
    await fsp.mkdir(path.join(root, path.dirname(rel)), { recursive: true })
    await fsp.writeFile(path.join(root, rel), seededBytes(50_000 + i, size))
    files.push(rel)
  }
  return files
}
