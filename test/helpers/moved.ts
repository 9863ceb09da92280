// Whether blocks a manifest points at still hold the image: after a relocation (btrfs balance, xfs_fsr)
// and writes that reuse the old places, reading the manifest's extents raw must give other bytes, or
// a test that "the view followed" would pass without any following.
import { promises as fsp } from 'node:fs'
import { RawDevice } from '../../src/device/reader'

/** How many extents of these files (by inode) no longer hold the file's image bytes at their place. */
export async function overwrittenOldExtents(manifest: string, files: Array<{ ino: number; content: Buffer }>): Promise<number> {
  const m = JSON.parse(await fsp.readFile(manifest, 'utf8'))
  const devices: RawDevice[] = m.devices.map((d: { id: string; hint: string }) => RawDevice.open(d.id, d.hint))
  let changed = 0
  try {
    for (const { ino, content } of files) {
      const inode = m.inodes.find((i: { ino: number }) => i.ino === ino)
      if (!inode) throw new Error(`inode ${ino} is not in ${manifest}`)
      for (const e of inode.extents) {
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
