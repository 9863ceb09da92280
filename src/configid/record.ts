// The config-ID record: a small JSON file on storage both hosts share, naming the current layout of a
// frozen image. The initiator rewrites it atomically (temp file + rename); the mover checks it on every open.
import fs from 'node:fs'
import path from 'node:path'
import { writeFileAtomic } from '../manifest/io'

export const RECORD_FORMAT = 'extfs-config-record'

export type RecordState = 'current' | 'released'

export interface ConfigRecord {
  format: typeof RECORD_FORMAT
  version: 1
  configId: string
  state: RecordState
  updatedAt: string
}

export function writeRecord(file: string, configId: string, state: RecordState): void {
  const record: ConfigRecord = { format: RECORD_FORMAT, version: 1, configId, state, updatedAt: new Date().toISOString() }
  writeFileAtomic(file, JSON.stringify(record) + '\n')
}

/** Where the record named in a manifest lives: relative names are beside the manifest. */
export function recordPath(manifestPath: string, configRecord: string): string {
  return path.resolve(path.dirname(manifestPath), configRecord)
}

/** The verdict of one check: whether opens may be served. */
export type Verdict =
  | { ok: true }
  | { ok: false; reason: string }

function judge(text: string, expectedId: string): Verdict {
  let r: Partial<ConfigRecord>
  try {
    r = JSON.parse(text)
  } catch {
    return { ok: false, reason: 'config-ID record is not valid JSON' }
  }
  if (r.format !== RECORD_FORMAT || typeof r.configId !== 'string') return { ok: false, reason: 'config-ID record is malformed' }
  if (r.state === 'released') return { ok: false, reason: `frozen image ${r.configId} was released` }
  if (r.state !== 'current') return { ok: false, reason: `config-ID record has unknown state ${String(r.state)}` }
  if (r.configId !== expectedId) return { ok: false, reason: `config ID changed from ${expectedId} to ${r.configId}` }
  return { ok: true }
}

/**
 * Checks the record for one expected config ID. Each check costs one stat(2); the file is re-read and
 * re-judged only when its identity (inode, size, mtime, ctime) changed, since the initiator always
 * replaces it by rename.
 */
export class ConfigWatch {
  private stamp = ''
  private verdict: Verdict = { ok: false, reason: 'not checked yet' }

  constructor(readonly file: string, readonly expectedId: string) {}

  check(): Verdict {
    let st: fs.Stats
    try {
      st = fs.statSync(this.file)
    } catch (err) {
      this.stamp = ''
      return { ok: false, reason: `config-ID record ${this.file} unreadable: ${(err as NodeJS.ErrnoException).code}` }
    }
    const stamp = `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`
    if (stamp !== this.stamp) {
      try {
        this.verdict = judge(fs.readFileSync(this.file, 'utf8'), this.expectedId)
        this.stamp = stamp
      } catch (err) {
        return { ok: false, reason: `config-ID record ${this.file} unreadable: ${(err as NodeJS.ErrnoException).code}` }
      }
    }
    return this.verdict
  }
}
