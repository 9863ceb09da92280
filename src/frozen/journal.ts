// The frozen-image journal: written atomically beside the manifest *before* export creates anything
// (freeze, snapshot, clones), naming exactly what it will create. If export dies half-way, the journal
// is what `extfs release <manifest>` cleans up from; release removes it last.
import fs from 'node:fs'
import { writeFileAtomic } from '../manifest/io'
import type { FrozenImageKind, SnapshotMechanism } from '../manifest/types'
import { ExportError } from '../errors'

export const JOURNAL_FORMAT = 'extfs-frozen-image-journal'

export interface FrozenImageJournal {
  format: typeof JOURNAL_FORMAT
  version: 1
  imageId: string
  kind: FrozenImageKind
  mechanism?: SnapshotMechanism
  mountpoint: string
  fsType: string
  fsUuid?: string
  /** The image directory (snapshot images only): `<mountpoint>/.extfs-images/<imageId>`. */
  imagePath?: string
  /** The manifest and config-ID record this export was writing (absolute). */
  manifest: string
  record: string
  createdAt: string
}

export function journalPathOf(manifestPath: string): string {
  return `${manifestPath}.frozen-image`
}

export function writeJournal(file: string, j: FrozenImageJournal): void {
  writeFileAtomic(file, JSON.stringify(j, null, 2) + '\n')
}

/** The journal at `file`, or undefined when there is none. A journal we cannot trust is an error, never a guess. */
export function readJournal(file: string): FrozenImageJournal | undefined {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  let j: Partial<FrozenImageJournal>
  try {
    j = JSON.parse(text)
  } catch {
    throw new ExportError(`${file}: frozen-image journal is not valid JSON; remove it by hand after checking ${'<mountpoint>/.extfs-images'}`)
  }
  const ok = j.format === JOURNAL_FORMAT && j.version === 1 && typeof j.imageId === 'string' && /^[0-9a-f]{32}$/.test(j.imageId) &&
    typeof j.kind === 'string' && typeof j.mountpoint === 'string' && typeof j.fsType === 'string' &&
    typeof j.record === 'string' && (j.imagePath === undefined || typeof j.imagePath === 'string')
  if (!ok) throw new ExportError(`${file}: not a frozen-image journal this version understands`)
  return j as FrozenImageJournal
}

export function removeJournal(file: string): void {
  fs.rmSync(file, { force: true })
}
