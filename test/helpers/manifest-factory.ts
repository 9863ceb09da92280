// A small, valid manifest to start tests from. Every call returns a fresh deep copy, so a test may
// mutate it freely.
//
//   /            inode 1  dir
//   /a           inode 2  file, 10000 bytes: data 0..4096 on d0, hole 4096..8192, data 8192.. on d0
//                         (the last extent runs past EOF to 12288, as the tail of a block does)
//   /sub         inode 3  dir
//   /sub/hard    inode 2  (a hard link to /a)
//   /ln          inode 4  symlink -> a
import type { Test } from 'tap'
import type { Device, Extent, Inode, Manifest, Timespec } from '../../src/manifest/types'
import { ManifestError, ExitCode } from '../../src/errors'

export const T0: Timespec = [1_700_000_000, 123_456_789]

export function makeDevice(id: string, size: number, extra: Partial<Device> = {}): Device {
  return { id, size, identity: { fsUuid: '0b5c8a38-1d2b-4c36-9a4e-7e7f0cbd1a11' }, fingerprints: [], ...extra }
}

export function makeInode(ino: number, kind: Inode['kind'], extra: Partial<Inode> = {}): Inode {
  const base: Inode = {
    ino, kind, perm: kind === 'dir' ? 0o755 : 0o644, uid: 1000, gid: 1000, nlink: 1,
    size: 0, blocks: 0, atime: [...T0], mtime: [...T0], ctime: [...T0],
  }
  if (kind === 'dir') base.entries = []
  return { ...base, ...extra }
}

export function extent(fileOffset: number, device: number, deviceOffset: number, length: number): Extent {
  return { fileOffset, device, deviceOffset, length }
}

export function makeManifest(): Manifest {
  return {
    format: 'extfs-manifest',
    version: 1,
    features: [],
    configId: 'cfg-0001-abcdef',
    createdAt: '2024-05-01T12:00:00.000Z',
    source: { host: 'initiator1', paths: ['/srv/data'] },
    frozenImage: { kind: 'freeze', mountpoint: '/srv/data', fsType: 'ext4' },
    configRecord: '/shared/extfs/cfg-0001-abcdef.json',
    blockSize: 4096,
    devices: [
      makeDevice('d0', 1024 * 1024, {
        fingerprints: [{ offset: 0, length: 4096, sha256: 'ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7' }],
        hint: '/dev/vdb',
      }),
    ],
    root: 1,
    inodes: [
      makeInode(1, 'dir', { nlink: 3, size: 4096, blocks: 8, entries: [
        { name: 'a', ino: 2 }, { name: 'sub', ino: 3 }, { name: 'ln', ino: 4 },
      ] }),
      makeInode(2, 'file', { nlink: 2, size: 10000, blocks: 24, extents: [
        extent(0, 0, 0, 4096), extent(8192, 0, 8192, 4096),
      ] }),
      makeInode(3, 'dir', { nlink: 2, size: 4096, blocks: 8, entries: [{ name: 'hard', ino: 2 }] }),
      makeInode(4, 'symlink', { perm: 0o777, size: 1, target: 'a' }),
    ],
  }
}

/** The inode numbered `ino` in `m` (throws if missing, to keep test mutations short). */
export function inodeOf(m: Manifest, ino: number): Inode {
  const node = m.inodes.find((n) => n.ino === ino)
  if (node === undefined) throw new Error(`test manifest has no inode ${ino}`)
  return node
}

/** Asserts that `fn` refuses with a one-line ManifestError (exit BadManifest) matching `message`. */
export function refused(t: Test, fn: () => unknown, message: RegExp): void {
  try {
    fn()
    t.fail(`accepted, expected ${message}`)
  } catch (err) {
    t.type(err, ManifestError)
    const e = err as ManifestError
    t.equal(e.exitCode, ExitCode.BadManifest)
    t.match(e.message, message)
    t.notMatch(e.message, /\n/, 'one line')
  }
}
