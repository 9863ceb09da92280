// The equivalence check of a bulk mapper against the reference, the VFS walker (ext4-bulk and xfs-bulk
// tests): the same frozen tree exported both ways must give the same manifest, inode for inode and
// field for field (times to the nanosecond, nlink, blocks, attrs, xattrs and ACL bytes, carried
// content, extents as the view reads them), and both views must show the source's tree.
import type { Test } from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { runOk } from './exec'
import { seededBytes } from './populate'
import { extfs, release, scratchDir, withView } from './extfs'
import { diffTrees, snapshotTree, type Tree } from './tree'
import { readCheckedManifest } from '../../src/manifest/io'
import type { Inode, Manifest } from '../../src/manifest/types'

const SNAP = { timePrecisionNs: 1 } as const

/** Export `tree` through `mapper`, snapshot its view while the image is held, release. */
export async function exportAndView(t: Test, tree: string, dir: string, mapper: 'vfs' | 'bulk', view: boolean, args: string[] = [], env?: NodeJS.ProcessEnv): Promise<{ manifest: Manifest; view?: Tree }> {
  const out = path.join(dir, mapper === 'vfs' ? 'vfs.json' : 'bulk.m2')
  try {
    const r = await extfs(['export', tree, '--output', out, '--mapper', mapper, '--log-level', 'warn', ...args], { timeoutMs: 300_000, env })
    t.equal(r.code, 0, `${mapper} export: ${r.stderr}`)
    const manifest = readCheckedManifest(out)
    return { manifest, view: view ? await withView(out, (mnt) => snapshotTree(mnt, SNAP)) : undefined }
  } finally {
    await release(out)
  }
}

/** Every field of every inode, the extents as the view reads them (joined where they continue each other). */
export function compareManifests(t: Test, vfs: Manifest, bulk: Manifest): void {
  t.equal(bulk.version, 2, 'the bulk mapper writes format 2')
  t.same(bulk.root, vfs.root, 'root')
  t.same([...bulk.features].sort(), [...vfs.features].sort(), 'features')
  t.same(bulk.devices.map((d) => [d.id, d.size, d.hint]), vfs.devices.map((d) => [d.id, d.size, d.hint]), 'devices')
  t.ok(bulk.devices.every((d) => d.fingerprints.length > 0 || !bulk.inodes.some((n) => n.extents?.length)), 'fingerprints taken')
  const byIno = new Map(vfs.inodes.map((n) => [n.ino, n]))
  t.equal(bulk.inodes.length, vfs.inodes.length, 'inode count')
  let differences = 0
  for (const n of bulk.inodes) {
    const want = byIno.get(n.ino)
    const got = normalize(n)
    if (!want) {
      t.fail(`inode ${n.ino} only in the bulk manifest`)
      continue
    }
    if (!isDeepStrictEqual(got, normalize(want)) && differences++ < 5) t.same(got, normalize(want), `inode ${n.ino}`)
  }
  t.equal(differences, 0, 'every inode equal')
}

function normalize(n: Inode): Record<string, unknown> {
  const { entries, extents, xattrs, ...rest } = n
  const out: Record<string, unknown> = { ...rest }
  if (entries) out.entries = [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  if (xattrs) out.xattrs = Object.fromEntries(Object.entries(xattrs).sort())
  if (extents?.length) {
    const joined: { fileOffset: number; device: number; deviceOffset: number; length: number }[] = []
    for (const e of extents) {
      const last = joined[joined.length - 1]
      if (last && last.device === e.device && last.fileOffset + last.length === e.fileOffset && last.deviceOffset + last.length === e.deviceOffset) last.length += e.length
      else joined.push({ fileOffset: e.fileOffset, device: e.device, deviceOffset: e.deviceOffset, length: e.length })
    }
    out.extents = joined
  }
  return out
}

/** Both exports, their manifests compared, both views and the source compared as trees. */
export async function equivalent(t: Test, lfs: { mountpoint: string }, tree: string, opts: { views: boolean; args?: string[]; scratchPrefix?: string; bulkEnv?: NodeJS.ProcessEnv } = { views: true }): Promise<void> {
  const dir = await scratchDir(t, opts.scratchPrefix ?? 'extfs-bulk-')
  await runOk('sync', ['-f', lfs.mountpoint])
  const vfs = await exportAndView(t, tree, dir, 'vfs', opts.views, opts.args)
  const bulk = await exportAndView(t, tree, dir, 'bulk', opts.views, opts.args, opts.bulkEnv && { ...process.env, ...opts.bulkEnv })
  compareManifests(t, vfs.manifest, bulk.manifest)
  if (!opts.views) return
  t.same(diffTrees(vfs.view!, bulk.view!), [], 'the views are the same tree')
  t.same(diffTrees(await snapshotTree(tree, SNAP), bulk.view!), [], 'the bulk view is the source')
}

/**
 * For trees whose views are not read whole (a sparse file of 5 GiB through FUSE): both exports, the
 * manifests compared, then `check` run on the bulk view.
 */
export async function equivalentManifests(t: Test, lfs: { mountpoint: string }, tree: string, scratchPrefix: string, check: (mnt: string) => Promise<void>): Promise<void> {
  const dir = await scratchDir(t, scratchPrefix)
  await runOk('sync', ['-f', lfs.mountpoint])
  const vfs = path.join(dir, 'vfs.json')
  t.equal((await extfs(['export', tree, '--output', vfs, '--mapper', 'vfs', '--format', '1'])).code, 0)
  await release(vfs)
  const bulk = path.join(dir, 'bulk.m2')
  try {
    const r = await extfs(['export', tree, '--output', bulk, '--mapper', 'bulk'])
    t.equal(r.code, 0, r.stderr)
    compareManifests(t, readCheckedManifest(vfs), readCheckedManifest(bulk))
    await withView(bulk, check)
  } finally {
    await release(bulk)
  }
}

/** A sparse file `name` in `tree` with 10,000 bytes at 5 GiB + 123 (extent offsets past 32 bits), for checkReadPast. */
export async function writePast4GiB(tree: string, name: string): Promise<{ data: Buffer; at: number }> {
  const data = seededBytes(9, 10000)
  const at = 5 * 1024 * 1024 * 1024 + 123
  const fh = await fsp.open(path.join(tree, name), 'w')
  await fh.write(data, 0, data.length, at)
  await fh.close()
  return { data, at }
}

/** A file of `data` written at `at` (past 4 GiB), read back through the view at `mnt`, across the hole before it. */
export async function checkReadPast(t: Test, mnt: string, name: string, data: Buffer, at: number): Promise<void> {
  const got = Buffer.alloc(data.length + 100)
  const v = await fsp.open(path.join(mnt, name))
  const { bytesRead } = await v.read(got, 0, got.length, at - 50)
  await v.close()
  t.equal(bytesRead, data.length + 50, 'read up to EOF')
  t.ok(got.subarray(0, 50).equals(Buffer.alloc(50)) && got.subarray(50, 50 + data.length).equals(data), 'the bytes past 4 GiB')
}
