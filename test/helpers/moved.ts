// Whether blocks a manifest points at still hold the image: after a relocation (btrfs balance, xfs_fsr,
// btrfs replace) and writes that reuse the old places, reading the manifest's extents raw must give
// other bytes, or a test that "the view followed" would pass without any following. And the moves
// themselves: a btrfs image to move, a balance, a fill that reuses the old places, the remap after.
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import type { Test } from 'tap'
import { readJson, Loose } from './tamper'
import { run, runOk } from './exec'
import { extfs, REMAPPED } from './extfs'
import { seededBytes } from './populate'
import type { BtrfsFs } from './btrfs'
import { RawDevice } from '../../src/device/reader'

const MiB = 1024 * 1024
/** The files exportBtrfsImage writes in the image's root. */
export const IMAGE_FILES = ['a', 'b', 'c', 'd', 'e', 'f']

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

/** A subvolume with a few MiB-sized files, exported as a read-only snapshot. */
export async function exportBtrfsImage(t: Test, fs: BtrfsFs, scratch: string): Promise<{ manifest: string; source: string }> {
  const source = path.join(fs.mountpoint, 'data')
  await runOk('btrfs', ['subvolume', 'create', source])
  for (const [i, name] of IMAGE_FILES.entries()) await fsp.writeFile(path.join(source, name), seededBytes(100 + i, 3 * MiB + i * 4097))
  await runOk('sync', [])
  const manifest = path.join(scratch, 'nightly.json')
  // --mapper vfs: the helpers below read the manifest (and its deltas) as format 1 JSON.
  const exp = await extfs(['export', source, '--output', manifest, '--frozen-image', 'snapshot', '--mapper', 'vfs'])
  t.equal(exp.code, 0, `export: ${exp.stderr}`)
  return { manifest, source }
}

/** Write zeros until the filesystem is full: it places them anywhere free, freed old places included. */
export async function fillUp(mountpoint: string): Promise<void> {
  await run('dd', ['if=/dev/zero', `of=${path.join(mountpoint, 'filler')}`, 'bs=1M', 'conv=fsync'], { timeoutMs: 120_000 })
  await runOk('sync', [])
}

/** Relocate every data chunk, then fill the filesystem, so the old locations hold other bytes. */
export async function relocate(fs: BtrfsFs): Promise<void> {
  await runOk('btrfs', ['balance', 'start', '-d', '--full-balance', fs.mountpoint], { timeoutMs: 120_000 })
  await fillUp(fs.mountpoint)
}

/** name → content of each of `names` in `dir`. */
export async function readNamed(dir: string, names: string[]): Promise<Map<string, Buffer>> {
  return new Map(await Promise.all(names.map(async (n) => [n, await fsp.readFile(path.join(dir, n))] as [string, Buffer])))
}

/**
 * `extfs remap` must publish a delta of at least one file; returns its files and new devices, and the
 * devices the delta (written as the image's first) proves again and retires.
 */
export async function remapMoved(t: Test, manifest: string): Promise<{ files: number; newDevices: number; proved?: number[]; retired?: number[] }> {
  const remap = await extfs(['remap', manifest])
  t.equal(remap.code, 0, `remap: ${remap.stderr}`)
  const match = REMAPPED.exec(remap.stdout)
  t.ok(match, `remap published a delta: ${remap.stdout.trim()}`)
  const files = Number(match?.[3] ?? 0)
  t.ok(files > 0, `the delta moves ${files} files`)
  const delta = await readJson(`${manifest}.delta-1`)
  return { files, newDevices: Number(match?.[4] ?? 0), proved: delta.proofs?.map((p: { device: number }) => p.device), retired: delta.retired }
}
