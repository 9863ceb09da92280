// Pure arithmetic: a btrfs logical address range → byte ranges on member devices, through the chunk
// map (the chunk tree as linux.btrfsChunks returns it). No I/O, so it is table-tested in
// test/unit/btrfs-chunks.test.ts; src/mapping/btrfs.ts feeds it the live chunk tree.
//
// The layout rules are the kernel's (fs/btrfs/volumes.c, btrfs_map_block). Within a chunk at offset
// `o = logical - chunk.logical`, with stripe unit `L = stripeLen`:
//   single, DUP, RAID1, RAID1C3, RAID1C4: every copy is linear: stripe[i].offset + o. Copy 0 is the
//                        one read; the others are recorded with the data checksums that choose
//                        between them (resolveMirrored).
//   RAID0 (N stripes):   unit u = floor(o / L) lives on stripe u mod N, at row floor(u / N):
//                        stripe[u mod N].offset + floor(u / N)·L + (o mod L).
//   RAID10 (N stripes, S = subStripes copies each, N/S stripe sets): unit u lives on set u mod (N/S),
//                        whose first stripe is index (u mod (N/S))·S (copy 0; the set's other S-1
//                        stripes hold the other copies), at row floor(u / (N/S)).
// Worked example, RAID0 over 2 devices, L = 64 KiB, chunk at logical 1 GiB, stripes at 1 MiB (devid 1)
// and 9 MiB (devid 2): logical 1 GiB + 200 KiB is o = 200 KiB, unit 3 (offset 8 KiB inside it),
// stripe 3 mod 2 = 1, row 1, so devid 2 at 9 MiB + 64 KiB + 8 KiB.
import { ExportError } from '../errors'
import type { BtrfsChunk } from '../linux'
import { lastAtOrBefore } from '../extents/search'

// Block group profile bits (linux/btrfs_tree.h, BTRFS_BLOCK_GROUP_*).
export const BG_RAID0 = 1 << 3
export const BG_RAID1 = 1 << 4
export const BG_DUP = 1 << 5
export const BG_RAID10 = 1 << 6
export const BG_RAID5 = 1 << 7
export const BG_RAID6 = 1 << 8
export const BG_RAID1C3 = 1 << 9
export const BG_RAID1C4 = 1 << 10
const PROFILE_MASK = BG_RAID0 | BG_RAID1 | BG_DUP | BG_RAID10 | BG_RAID5 | BG_RAID6 | BG_RAID1C3 | BG_RAID1C4
const MIRRORED = BG_DUP | BG_RAID1 | BG_RAID1C3 | BG_RAID1C4

/** `length` bytes at byte `offset` of btrfs member device `devid`. */
export interface MemberSpan {
  devid: number
  offset: number
  length: number
}

/** The chunk tree sorted by logical address, checked once so each lookup is a binary search. */
export class ChunkMap {
  readonly chunks: readonly BtrfsChunk[]

  constructor(chunks: readonly BtrfsChunk[]) {
    const sorted = [...chunks].sort((a, b) => a.logical - b.logical)
    for (let i = 0; i < sorted.length; i++) {
      checkChunk(sorted[i])
      if (i > 0 && sorted[i - 1].logical + sorted[i - 1].length > sorted[i].logical) {
        throw new ExportError(`btrfs chunks at logical ${sorted[i - 1].logical} and ${sorted[i].logical} overlap`)
      }
    }
    this.chunks = sorted
  }

  /** The chunk holding logical address `addr`, or undefined when no chunk does. */
  find(addr: number): BtrfsChunk | undefined {
    const found = lastAtOrBefore(this.chunks.length, (i) => this.chunks[i]!.logical, addr)
    if (found < 0) return undefined
    const c = this.chunks[found]
    return addr < c.logical + c.length ? c : undefined
  }
}

/** Refuse what we cannot map (parity RAID, unknown profiles) and item shapes that make no sense. */
function checkChunk(c: BtrfsChunk): void {
  const where = `btrfs chunk at logical ${c.logical}`
  const profile = c.type & PROFILE_MASK
  if (profile & (BG_RAID5 | BG_RAID6)) throw new ExportError(`${where} is RAID5/6; parity profiles are not supported`)
  if (profile !== 0 && (profile & (profile - 1)) !== 0) throw new ExportError(`${where} has several profile bits (type 0x${c.type.toString(16)})`)
  if (c.length <= 0 || c.numStripes < 1 || c.stripes.length !== c.numStripes) throw new ExportError(`${where} is malformed`)
  if (profile & (BG_RAID0 | BG_RAID10)) {
    if (!(c.stripeLen > 0)) throw new ExportError(`${where} has stripe length ${c.stripeLen}`)
    if (profile === BG_RAID10 && (c.subStripes < 1 || c.numStripes % c.subStripes !== 0)) {
      throw new ExportError(`${where}: ${c.numStripes} stripes do not divide into sets of ${c.subStripes}`)
    }
  }
}

/** `length` logical bytes on every copy: copies[0] is the one read, the rest mirror it byte for byte. */
export interface MirroredSpan {
  length: number
  copies: { devid: number; offset: number }[]
}

/**
 * Where logical bytes [logical, logical + length) live, in order, with every copy: split at stripe-unit
 * boundaries for RAID0/RAID10 and at chunk boundaries, neighbours whose copies all continue each other
 * merged. One copy for single and RAID0, all of them for DUP, RAID1, RAID1C3/C4 and RAID10's stripe
 * sets. Throws ExportError when any byte of the range is in no chunk.
 */
export function resolveMirrored(map: ChunkMap, logical: number, length: number): MirroredSpan[] {
  const out: MirroredSpan[] = []
  let addr = logical
  const end = logical + length
  while (addr < end) {
    const c = map.find(addr)
    if (!c) throw new ExportError(`btrfs logical address ${addr} is in no chunk (range ${logical}+${length})`)
    const chunkEnd = Math.min(end, c.logical + c.length)
    const profile = c.type & PROFILE_MASK
    if (profile === BG_RAID0 || profile === BG_RAID10) {
      const sets = profile === BG_RAID0 ? c.numStripes : c.numStripes / c.subStripes
      const width = profile === BG_RAID0 ? 1 : c.subStripes
      while (addr < chunkEnd) {
        const o = addr - c.logical
        const unit = Math.floor(o / c.stripeLen)
        const within = o - unit * c.stripeLen
        const n = Math.min(chunkEnd - addr, c.stripeLen - within)
        const row = Math.floor(unit / sets) * c.stripeLen + within
        const set = c.stripes.slice((unit % sets) * width, (unit % sets) * width + width)
        push(out, set.map((s) => ({ devid: s.devid, offset: s.offset + row })), n)
        addr += n
      }
    } else {
      // single (no profile bit) or a mirrored profile: every copy maps the chunk linearly.
      if (profile !== 0 && !(profile & MIRRORED)) throw new ExportError(`btrfs chunk at logical ${c.logical}: unsupported profile 0x${profile.toString(16)}`)
      const copies = profile === 0 ? [c.stripes[0]] : c.stripes
      push(out, copies.map((s) => ({ devid: s.devid, offset: s.offset + (addr - c.logical) })), chunkEnd - addr)
      addr = chunkEnd
    }
  }
  return out
}

/** Where logical bytes [logical, logical + length) live, in order: copy 0 of resolveMirrored. */
export function resolveLogical(map: ChunkMap, logical: number, length: number): MemberSpan[] {
  const out: MemberSpan[] = []
  for (const s of resolveMirrored(map, logical, length)) {
    const c = s.copies[0]!
    const last = out[out.length - 1]
    if (last && last.devid === c.devid && last.offset + last.length === c.offset) last.length += s.length
    else out.push({ devid: c.devid, offset: c.offset, length: s.length })
  }
  return out
}

function push(out: MirroredSpan[], copies: MirroredSpan['copies'], length: number): void {
  const last = out[out.length - 1]
  const continues = last && last.copies.length === copies.length &&
    last.copies.every((c, k) => c.devid === copies[k]!.devid && c.offset + last.length === copies[k]!.offset)
  if (continues) last.length += length
  else out.push({ length, copies })
}
