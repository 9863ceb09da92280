// Tables for the addon's entry points without a mount (checkTables, planRead, readFile, checkDelta,
// largeAcls) and for comparing what gets served, packed by the one packer the mover uses: a body of
// version 2 (a v2 file's, or a v1 manifest's re-encoded: src/native-engine/v1-manifest.ts) loaded by
// C into a tables file, read back whole here. Beside the image: ino → index and index → path, read
// back from it (linear: tests only).
import fs from 'node:fs'
import type { Manifest } from '../../src/manifest/types'
import type { ProgressSink } from '../../src/progress'
import { decodeName } from '../../src/manifest/names'
import { openManifest } from '../../src/manifest/file'
import { readLayout, verifyMac } from '../../src/manifest/v2/read'
import { encodeV1Body, withBodyOf } from '../../src/native-engine/v1-manifest'
import { loadFacts, openTablesFile, packTablesFile, type BodyToLoad } from '../../src/native-engine/mapped-tables'
import { LAYOUT, TableReader, Writer } from '../../src/native-engine/tables'

export interface TestTables {
  image: Buffer
  paths: { index(ino: number): number; ino(index: number): number; path(index: number): string }
}

/** A manifest held as objects packed; `deviceFds` (indexed like manifest.devices) written in; the loader's progress to `progress`. */
export function packedTables(manifest: Manifest, deviceFds: readonly number[], progress?: ProgressSink): TestTables {
  if (deviceFds.length !== manifest.devices.length) throw new RangeError(`view tables: ${deviceFds.length} device fds for ${manifest.devices.length} devices`)
  return withPaths(withBodyOf(manifest, (body) => imageOf(body, deviceFds, undefined, progress)))
}

/** The v1 manifest file `file` streamed, checked (signature with `key`) and packed as a mount packs it. */
export function packedV1File(file: string, key: Buffer | undefined, deviceFds: (devices: number) => number[]): TestTables {
  const body = encodeV1Body(file, key)
  try {
    return withPaths(imageOf(body, deviceFds(body.header.devices.length)))
  } finally {
    fs.closeSync(body.fd)
  }
}

/** The v2 manifest file `file` (MAC verified with `key`) packed as a mount packs it. */
export function packedV2File(file: string, key: Buffer | undefined, deviceFds: (devices: number) => number[]): TestTables {
  const fd = openManifest(file)
  try {
    const layout = readLayout(fd, file, Number.MAX_SAFE_INTEGER)
    if (key) verifyMac(fd, file, layout, key)
    const { trailer } = layout
    const body = { fd, start: layout.bodyStart, end: layout.bodyEnd, counts: { inodes: trailer.inodes, dirs: trailer.dirs, entries: trailer.entries },
      facts: loadFacts(layout.header, layout.facts.deviceSizes) }
    return withPaths(imageOf(body, deviceFds(layout.facts.deviceSizes.length), file))
  } finally {
    fs.closeSync(fd)
  }
}

function imageOf(body: BodyToLoad, deviceFds: readonly number[], path = '(in memory)', progress?: ProgressSink): Buffer {
  const tablesFd = openTablesFile()
  try {
    const { tablesBytes } = packTablesFile(path, body, tablesFd, progress)
    const image = Buffer.alloc(fs.fstatSync(tablesFd).size)
    if (image.length !== tablesBytes) throw new Error(`the tables file is ${image.length} bytes, the image ${tablesBytes}`)
    fs.readSync(tablesFd, image, 0, image.length, 0)
    const w = new Writer(image)
    const devicesOff = new TableReader(image).header.devices_off!
    deviceFds.forEach((fd, k) => w.struct('device', devicesOff + k * LAYOUT.device.size, { fd }))
    return image
  } finally {
    fs.closeSync(tablesFd)
  }
}

function withPaths(image: Buffer): TestTables {
  const r = new TableReader(image)
  const n = r.header.n_inodes!
  const inos = Array.from({ length: n }, (_, i) => r.inode(i).ino!)
  const path = (index: number): string => {
    if (index < 0 || index >= n) return `(inode index ${index})`
    const parts: string[] = []
    for (let i = index; i !== 0;) {
      const parent = r.inode(i).parent!
      const dir = r.inode(parent)
      let k = 0
      while (k < dir.count! && r.dirent(dir.first! + k).child !== i) k++
      parts.push(decodeName(r.dirent(dir.first! + k).name))
      i = parent
    }
    return '/' + parts.reverse().join('/')
  }
  return { image, paths: { index: (ino) => inos.indexOf(ino), ino: (index) => inos[index] ?? -1, path } }
}
