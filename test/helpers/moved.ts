// Whether blocks a manifest points at still hold the image: after a relocation (btrfs balance, xfs_fsr,
// btrfs replace) and writes that reuse the old places, reading the manifest's extents raw must give
// other bytes, or a test that "the view followed" would pass without any following.
import { readJson, Loose } from './tamper'
import { RawDevice } from '../../src/device/reader'

/** name → inode of the entries in the image's root directory. */
export function rootFiles(m: Loose): Map<string, Loose> {
  const byIno = new Map<number, Loose>(m.inodes.map((i: Loose) => [i.ino, i]))
  const out = new Map<string, Loose>()
  for (const i of m.inodes) for (const e of i.entries ?? []) out.set(e.name, byIno.get(e.ino))
  return out
}

/** How many of the manifest's extents of `contents`' files (by name, in the root) no longer hold the file's bytes at their old place. */
export async function overwrittenOldExtents(manifest: string, contents: Map<string, Buffer>): Promise<number> {
  const m = await readJson(manifest)
  const files = rootFiles(m)
  const devices = m.devices.map((d: { id: string; hint: string }) => RawDevice.open(d.id, d.hint))
  let changed = 0
  try {
    for (const [name, content] of contents) {
      for (const e of files.get(name).extents) {
        const len = Math.min(e.length, content.length - e.fileOffset)
        const raw = Buffer.alloc(len)
        devices[e.device].readExact(raw, 0, len, e.deviceOffset)
        if (!raw.equals(content.subarray(e.fileOffset, e.fileOffset + len))) changed++
      }
    }
  } finally {
    for (const d of devices) d.close()
  }
  return changed
}
