// An append-only byte blob for a delta's data (its extents' checksums and encodings: delta-tables.ts),
// in chunks so that growing never copies; `add` with a key seen before returns the earlier offset, so
// identical values are stored once.

/**
 * 32 MiB: at glibc's largest mmap threshold, so every chunk is its own mapping and returns to the
 * system when freed (smaller ones come from the heap, which keeps them resident). Only the pages
 * written become resident, so the slack of a small manifest costs address space, not memory.
 */
export let CHUNK_BYTES = 32 << 20

/**
 * Tests and fuzzing: chunks of `bytes` for blobs made from now on, so that small deltas cross chunk
 * boundaries (and a delta packed per input does not allocate 200 MiB).
 */
export function setChunkBytes(bytes: number): void {
  CHUNK_BYTES = bytes
}

const U32_MAX = 0xffff_ffff

export class Blob {
  private readonly chunkBytes = CHUNK_BYTES
  private chunks: Buffer[] = []
  size = 0
  private readonly seen = new Map<string, number>()

  add(bytes: Buffer, key?: string): number {
    if (key !== undefined) {
      const at = this.seen.get(key)
      if (at !== undefined) return at
      this.seen.set(key, this.size)
    }
    const at = this.size
    let done = 0
    while (done < bytes.length) {
      const used = this.size % this.chunkBytes
      if (used === 0 && this.chunks.length * this.chunkBytes === this.size) this.chunks.push(Buffer.allocUnsafe(this.chunkBytes))
      const n = bytes.copy(this.chunks[this.chunks.length - 1]!, used, done)
      done += n
      this.size += n
    }
    if (this.size > U32_MAX) throw new RangeError('view tables: a blob passes 4 GiB (u32 offsets)')
    return at
  }

  read(at: number, len: number): Buffer {
    const out = Buffer.allocUnsafe(len)
    for (let done = 0; done < len;) {
      const c = Math.floor((at + done) / this.chunkBytes)
      const o = (at + done) % this.chunkBytes
      done += this.chunks[c]!.copy(out, done, o, Math.min(this.chunkBytes, o + len - done))
    }
    return out
  }

  drainTo(image: Buffer, off: number): void {
    let left = this.size
    for (const chunk of this.chunks) {
      const n = Math.min(left, chunk.length)
      chunk.copy(image, off, 0, n)
      off += n
      left -= n
    }
    this.chunks = []
    this.seen.clear()
  }
}
