// A mounted btrfs filesystem's layout: its member devices and its chunk map, read once per export.
// FIEMAP on btrfs reports logical addresses; `resolve` turns each extent into spans on the members
// (the arithmetic is in btrfs-chunks.ts). Reading the chunk tree needs CAP_SYS_ADMIN.
import fs from 'node:fs'
import { ExportError } from '../errors'
import { linux } from '../linux'
import { splitDev } from './blockdev'
import { ChunkMap, resolveLogical, resolveMirrored } from './btrfs-chunks'
import type { DevNum, Span } from './span'
import type { BtrfsCsumInfo } from '../linux'

export interface BtrfsMember {
  devid: number
  /** The member's device UUID (dev_item.uuid), not the filesystem's. */
  uuid: string
  /** The device node as the kernel knows it, e.g. /dev/loop3. */
  path: string
  dev: DevNum
}

export class BtrfsLayout {
  private readonly byDevid: Map<number, BtrfsMember>

  private constructor(
    readonly fsid: string,
    readonly devices: BtrfsMember[],
    /** The chunk tree as read, sorted by logical address. */
    readonly chunks: ChunkMap,
    /** The data checksum algorithm and sizes (BTRFS_IOC_FS_INFO). */
    readonly csumInfo: BtrfsCsumInfo,
  ) {
    this.byDevid = new Map(devices.map((d) => [d.devid, d]))
  }

  /**
   * Query the filesystem mounted at `mountpoint`. The chunk map is only valid while the filesystem
   * cannot relocate chunks (balance, device replace): call this after freezing it.
   */
  static read(mountpoint: string): BtrfsLayout {
    let fd: number
    try {
      fd = fs.openSync(mountpoint, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
    } catch (err) {
      throw new ExportError(`${mountpoint}: cannot open: ${(err as Error).message}`)
    }
    try {
      const info = query(mountpoint, 'device list', () => linux.btrfsDevices(fd))
      const chunks = new ChunkMap(query(mountpoint, 'chunk tree', () => linux.btrfsChunks(fd)))
      const devices = info.devices.map((d) => ({ devid: d.devid, uuid: d.uuid, path: d.path, dev: memberDev(mountpoint, d.devid, d.path) }))
      return new BtrfsLayout(info.fsid, devices, chunks, query(mountpoint, 'checksum info', () => linux.btrfsCsumInfo(fd)))
    } finally {
      fs.closeSync(fd)
    }
  }

  /** Where logical bytes [logical, logical + length) live on the member devices, in order. */
  resolve(logical: number, length: number): Span[] {
    return resolveLogical(this.chunks, logical, length).map((s) => {
      const member = this.byDevid.get(s.devid)
      if (!member) throw new ExportError(`btrfs ${this.fsid}: logical ${logical} maps to devid ${s.devid}, which is missing`)
      return { dev: member.dev, offset: s.offset, length: s.length }
    })
  }

  /** Where logical bytes [logical, logical + length) live on every present copy, in order. */
  resolveMirrored(logical: number, length: number): MirroredMemberSpan[] {
    return resolveMirrored(this.chunks, logical, length).map((s) => {
      // A mirror on a member that is missing (a degraded mount) cannot be read: copy 0 must be
      // there, the others are left out.
      const present = s.copies.flatMap((c, k) => {
        const member = this.byDevid.get(c.devid)
        if (!member && k === 0) throw new ExportError(`btrfs ${this.fsid}: logical ${logical} maps to devid ${c.devid}, which is missing`)
        return member ? [{ dev: member.dev, offset: c.offset }] : []
      })
      return { length: s.length, copies: present }
    })
  }
}

/** `length` logical bytes on every present copy; copies[0] is the one read (see resolveMirrored). */
export interface MirroredMemberSpan {
  length: number
  copies: { dev: DevNum; offset: number }[]
}

function query<T>(mountpoint: string, what: string, fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    throw new ExportError(`${mountpoint}: cannot read the btrfs ${what}: ${(err as Error).message}`)
  }
}

/** A member's major:minor from its device node; a missing member (degraded mount) has no usable path. */
function memberDev(mountpoint: string, devid: number, devPath: string): DevNum {
  let st: fs.BigIntStats
  try {
    st = fs.statSync(devPath, { bigint: true })
  } catch (err) {
    throw new ExportError(`${mountpoint}: btrfs member devid ${devid} at "${devPath}" cannot be found: ${(err as Error).message}`)
  }
  if (!st.isBlockDevice()) throw new ExportError(`${mountpoint}: btrfs member devid ${devid} at ${devPath} is not a block device`)
  return splitDev(st.rdev)
}
