// `extfs inspect <manifest> --shards <n>`: the plan every mover of an n-way split computes (native/view/shard.c,
// docs/shards.md), from the manifest loaded into the view's tables as a mover loads it; nothing mounted.
import { readPackedManifest } from '../mover/load'
import { mappedTablesOf } from '../native-engine/mapped-tables'
import { viewAddon } from '../native-engine/addon'

export interface ShardsJson {
  schema: 'extfs.shards/1'
  manifest: string
  configId: string
  count: number
  files: number
  bytes: number
  /** The mean shard's bytes, rounded down. */
  meanBytes: number
  /** The shard with the most bytes (the lowest index among equals). */
  largest: number
  /** Its bytes are within 10% of the mean, or it holds one file larger than the mean alone. */
  balanced: boolean
  shards: { shard: number; files: number; bytes: number; inodes: number; largestFile: number }[]
}

/** A shard of `bytes` within 10% of the mean of `total` bytes over `count` shards (in integers: bytes * count <= 1.1 * total). */
function withinTenPercent(bytes: number, count: number, total: number): boolean {
  return bytes * count * 10 <= total * 11
}

export function shardsResult(manifest: string, count: number, key?: Buffer): ShardsJson {
  const m = readPackedManifest(manifest, key)
  const { shards } = viewAddon().shardPlan(mappedTablesOf(m)!.handle, count)
  const bytes = shards.reduce((sum, s) => sum + s.bytes, 0)
  let largest = 0
  shards.forEach((s, i) => (largest = s.bytes > shards[largest].bytes ? i : largest))
  const top = shards[largest]
  // Or one file larger than the mean: the shard's only bytes.
  const balanced = withinTenPercent(top.bytes, count, bytes) || (top.largest * count > bytes && top.bytes === top.largest)
  return {
    schema: 'extfs.shards/1', manifest, configId: m.configId, count, files: shards.reduce((sum, s) => sum + s.files, 0), bytes,
    meanBytes: Math.floor(bytes / count), largest, balanced,
    shards: shards.map((s, shard) => ({ shard, files: s.files, bytes: s.bytes, inodes: s.inodes, largestFile: s.largest })),
  }
}

export function shardsSentence(r: ShardsJson): string {
  const ratio = r.meanBytes === 0 ? '' : ` (${(r.shards[r.largest].bytes / (r.bytes / r.count)).toFixed(3)} x the mean)`
  const lines = [`${r.count} shard(s) of ${r.files} files, ${r.bytes} bytes; config ID ${r.configId}`]
  for (const s of r.shards) lines.push(`shard ${String(s.shard).padEnd(6)} ${s.files} files, ${s.bytes} bytes, ${s.inodes} inodes`)
  const top = r.shards[r.largest]
  const why = withinTenPercent(top.bytes, r.count, r.bytes) ? 'within 10% of the mean'
    : r.balanced ? 'one file larger than the mean, alone'
      : 'not within 10% of the mean: its files are too large against the mean to split evenly (docs/shards.md)'
  lines.push(`largest       shard ${r.largest}, ${top.bytes} bytes${ratio}, mean ${r.meanBytes} bytes: ${why}`)
  return lines.join('\n')
}
