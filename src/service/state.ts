// The state of `extfs serve` in SQLite (better-sqlite3): the images it answers for, each one's current
// config ID and state, the delta history that leads there, and the nonces seen recently (replay
// protection that survives a restart). WAL journal, one writer: the database is opened with an
// exclusive lock, so a second `serve` on the same file is refused instead of racing the first.
//
// A damaged state is refused, never papered over (docs/remap.md, "serve's state"): a file that exists
// is opened only when it is a database that passes `PRAGMA quick_check`; an empty one (truncated) is
// not silently replaced, since the nonces it held are what keeps a captured request from being
// replayed; a database left open by a process that died is opened only with its write-ahead log.
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { ExtfsError, ExitCode } from '../errors'
import type { NonceStore } from './auth'

export const DEFAULT_STATE_PATH = '/var/lib/extfs/serve.db'

/** Bumped when the tables change; a database from a newer extfs is refused, not guessed at. */
const SCHEMA_VERSION = 1

export type ImageState = 'current' | 'released'

export interface ImageRow {
  /** The manifest's base name without `.json`: how clients name the image. */
  name: string
  manifestPath: string
  /** The manifest's own config ID, the first of the chain. */
  c0: string
  configId: string
  state: ImageState
  /** Unix ms of the last change of configId or state. */
  updatedAt: number
}

export interface DeltaRow {
  image: string
  seq: number
  from: string
  to: string
  /** The delta file (absolute), or undefined when the bytes are kept in the database. */
  path?: string
  blob?: Buffer
  createdAt: number
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS images (
  name TEXT PRIMARY KEY,
  manifest_path TEXT NOT NULL,
  c0 TEXT NOT NULL,
  config_id TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('current', 'released')),
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deltas (
  image TEXT NOT NULL REFERENCES images(name) ON DELETE CASCADE,
  seq INTEGER NOT NULL CHECK (seq >= 1),
  from_id TEXT NOT NULL,
  to_id TEXT NOT NULL,
  path TEXT,
  blob BLOB,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (image, seq),
  CHECK ((path IS NULL) <> (blob IS NULL))
);
CREATE TABLE IF NOT EXISTS nonces (
  nonce TEXT PRIMARY KEY,
  expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at);
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
`

interface RawImage { name: string; manifest_path: string; c0: string; config_id: string; state: ImageState; updated_at: number }
interface RawDelta { image: string; seq: number; from_id: string; to_id: string; path: string | null; blob: Buffer | null; created_at: number }

export class ServeState implements NonceStore {
  private readonly db: Database.Database
  private readonly stmts: ReturnType<ServeState['prepare']>
  private lastPurge = 0

  /**
   * Requests signed before this time (unix ms, the opening) are refused (auth.ts): the nonces of
   * before are only as complete as the database, which may be an old copy or a fresh start.
   */
  readonly since = Date.now()
  /** Called once when SQLite finds the database damaged at run time (serve then stops: run.ts). */
  onDamage?: (err: ExtfsError) => void
  /**
   * The damage SQLite found at run time. From then on every call throws it without asking SQLite:
   * pages still in its cache would otherwise go on answering (a long poll woken as serve stops
   * answered "current" from them).
   */
  private damage?: ExtfsError

  /** Opens the database at `file`, creating it only where no file is; ':memory:' for tests. */
  constructor(readonly file: string) {
    const found = file === ':memory:' ? { exists: false, wal: false } : inspectStateFile(file)
    let opened: Database.Database | undefined
    try {
      this.db = opened = new Database(file, { timeout: 0 })
      // Exclusive before WAL: the WAL index then lives in this process's memory and no other process
      // can open the database while we hold it (one writer).
      this.db.pragma('locking_mode = EXCLUSIVE')
      // Checked before anything is written to it (journal_mode may write the header).
      if (found.exists) checkIntegrity(this.db, file)
      this.db.pragma('journal_mode = WAL')
      this.db.pragma('synchronous = FULL')
      this.db.pragma('foreign_keys = ON')
      const version = this.db.pragma('user_version', { simple: true }) as number
      if (version > SCHEMA_VERSION) {
        throw new ExtfsError(ExitCode.Usage, `state database ${file} is of version ${version}, newer than this extfs (${SCHEMA_VERSION}): upgrade extfs`)
      }
      // The first write takes the exclusive lock and keeps it until close.
      this.db.exec(SCHEMA)
      this.db.pragma(`user_version = ${SCHEMA_VERSION}`)
      if (found.exists && !found.wal && this.openMark() === 1) {
        throw damaged(file, `the serve that had it open did not close it, and its write-ahead log ${file}-wal is gone: its last changes (nonces, releases, deltas) are lost`)
      }
      this.setOpenMark(1)
    } catch (err) {
      opened?.close()
      if (err instanceof ExtfsError) throw err
      const e = err as Error & { code?: string }
      if (e.code === 'SQLITE_BUSY') throw new ExtfsError(ExitCode.Usage, `state database ${file} is in use (another extfs serve?)`)
      if (isDamage(e)) throw damaged(file, e.message)
      throw new ExtfsError(ExitCode.Usage, `cannot open state database ${file}: ${e.code ?? ''} ${e.message}`.replace(/\s+/g, ' ').trim())
    }
    this.stmts = this.prepare()
  }

  /** 1 while a serve has the database open (in the main file, not only in the WAL): see setOpenMark. */
  private openMark(): number | undefined {
    return (this.db.prepare('SELECT value FROM meta WHERE key = ?').get('open') as { value: number } | undefined)?.value
  }

  /**
   * The open mark, checkpointed into the main file: a database whose mark says open while its WAL
   * is missing lost the WAL of a serve that died (SQLite keeps the WAL while the database is open and
   * removes it at a clean close, so the WAL of a live or killed serve is always there).
   */
  private setOpenMark(value: number): void {
    this.db.prepare('INSERT INTO meta (key, value) VALUES (\'open\', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(value)
    this.db.pragma('wal_checkpoint(TRUNCATE)')
  }

  /** Runs a statement; a damaged database is reported once (onDamage) and thrown as one line naming the file, then and ever after. */
  private sql<T>(fn: () => T): T {
    if (this.damage) throw this.damage
    try {
      return fn()
    } catch (err) {
      if (!isDamage(err as Error & { code?: string })) throw err
      this.damage = damaged(this.file, (err as Error).message)
      this.onDamage?.(this.damage)
      throw this.damage
    }
  }

  private prepare() {
    const db = this.db
    return {
      images: db.prepare<[], RawImage>('SELECT * FROM images ORDER BY name'),
      image: db.prepare<[string], RawImage>('SELECT * FROM images WHERE name = ?'),
      upsertImage: db.prepare('INSERT INTO images (name, manifest_path, c0, config_id, state, updated_at) VALUES (@name, @manifestPath, @c0, @configId, @state, @updatedAt) ' +
        'ON CONFLICT (name) DO UPDATE SET manifest_path = excluded.manifest_path, c0 = excluded.c0, config_id = excluded.config_id, state = excluded.state, updated_at = excluded.updated_at'),
      setConfig: db.prepare('UPDATE images SET config_id = ?, state = ?, updated_at = ? WHERE name = ?'),
      deltas: db.prepare<[string], RawDelta>('SELECT * FROM deltas WHERE image = ? ORDER BY seq'),
      delta: db.prepare<[string, number], RawDelta>('SELECT * FROM deltas WHERE image = ? AND seq = ?'),
      addDelta: db.prepare('INSERT INTO deltas (image, seq, from_id, to_id, path, blob, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      dropDeltas: db.prepare('DELETE FROM deltas WHERE image = ?'),
      dropDeltasFrom: db.prepare('DELETE FROM deltas WHERE image = ? AND seq >= ?'),
      claimNonce: db.prepare('INSERT INTO nonces (nonce, expires_at) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING'),
      nonceExpiry: db.prepare<[string], { expires_at: number }>('SELECT expires_at FROM nonces WHERE nonce = ?'),
      renewNonce: db.prepare('UPDATE nonces SET expires_at = ? WHERE nonce = ?'),
      purgeNonces: db.prepare('DELETE FROM nonces WHERE expires_at < ?'),
    }
  }

  images(): ImageRow[] {
    return this.sql(() => this.stmts.images.all().map(imageRow))
  }

  image(name: string): ImageRow | undefined {
    const r = this.sql(() => this.stmts.image.get(name))
    return r ? imageRow(r) : undefined
  }

  /**
   * Registers `name` for `manifestPath` with chain start `c0`. Kept as it is when the same c0 is
   * registered again (a restart, or the manifest moved); a different c0 (a new export under the same
   * name) starts over: config c0, current, no deltas.
   */
  registerImage(name: string, manifestPath: string, c0: string, now = Date.now()): ImageRow {
    return this.sql(() => {
      const had = this.image(name)
      if (had && had.c0 === c0) {
        if (had.manifestPath !== manifestPath) this.stmts.upsertImage.run({ ...had, manifestPath })
        return { ...had, manifestPath }
      }
      const row: ImageRow = { name, manifestPath, c0, configId: c0, state: 'current', updatedAt: now }
      this.db.transaction(() => {
        this.stmts.dropDeltas.run(name)
        this.stmts.upsertImage.run(row)
      })()
      return row
    })
  }

  /**
   * Moves `name` to `configId`/`state`, first dropping deltas from `keepBelow` on (a chain that was
   * rewritten) and then adding `deltas`, in one transaction: a reader never sees a config ID without
   * the deltas that lead to it. Released is final: an image released stays released (false, and
   * nothing changed, when asked to make it current again).
   */
  publish(name: string, configId: string, state: ImageState, deltas: Omit<DeltaRow, 'image' | 'createdAt'>[], keepBelow?: number, now = Date.now()): boolean {
    return this.sql(() => this.db.transaction(() => {
      if (state === 'current' && this.stmts.image.get(name)?.state === 'released') return false
      if (keepBelow !== undefined) this.stmts.dropDeltasFrom.run(name, keepBelow)
      for (const d of deltas) this.stmts.addDelta.run(name, d.seq, d.from, d.to, d.path ?? null, d.blob ?? null, now)
      const r = this.stmts.setConfig.run(configId, state, now, name)
      if (r.changes !== 1) throw new Error(`state: no image ${name}`)
      return true
    })())
  }

  deltas(name: string): DeltaRow[] {
    return this.sql(() => this.stmts.deltas.all(name).map(deltaRow))
  }

  delta(name: string, seq: number): DeltaRow | undefined {
    const r = this.sql(() => this.stmts.delta.get(name, seq))
    return r ? deltaRow(r) : undefined
  }

  /** NonceStore: one insert per request; expired nonces are purged at most once a minute. */
  claim(nonce: string, expiresAt: number, now: number): boolean {
    return this.sql(() => this.claimNow(nonce, expiresAt, now))
  }

  private claimNow(nonce: string, expiresAt: number, now: number): boolean {
    if (now - this.lastPurge > 60_000) {
      this.stmts.purgeNonces.run(now)
      this.lastPurge = now
    }
    if (this.stmts.claimNonce.run(nonce, expiresAt).changes === 1) return true
    // Present: a replay unless it expired and was not purged yet (then it is reused legitimately).
    const had = this.stmts.nonceExpiry.get(nonce)
    if (had !== undefined && had.expires_at < now) {
      this.stmts.renewNonce.run(expiresAt, nonce)
      return true
    }
    return false
  }

  /** Clears the open mark (a clean close: SQLite checkpoints and removes the WAL). */
  close(): void {
    if (!this.db.open) return
    try {
      this.setOpenMark(0)
    } catch {
      // damaged: the next start finds out and says so
    }
    this.db.close()
  }
}

/** Whether a database is at `file` (and its WAL beside it); one that cannot be a database is refused. */
function inspectStateFile(file: string): { exists: boolean; wal: boolean } {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 })
  const wal = fs.existsSync(`${file}-wal`)
  let st: fs.Stats
  try {
    st = fs.statSync(file)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'ENOENT') throw damaged(file, `unreadable: ${code}`)
    if (wal) throw damaged(file, `it is missing but its write-ahead log ${file}-wal is there`)
    return { exists: false, wal }
  }
  if (!st.isFile()) throw damaged(file, 'not a regular file')
  if (st.size === 0) throw damaged(file, 'it is empty (0 bytes): truncated')
  try {
    fs.accessSync(file, fs.constants.R_OK | fs.constants.W_OK)
  } catch (err) {
    throw damaged(file, `unreadable: ${(err as NodeJS.ErrnoException).code}`)
  }
  return { exists: true, wal }
}

/** `PRAGMA quick_check` (every page and record well-formed; linear in the file's size, which is small). */
function checkIntegrity(db: Database.Database, file: string): void {
  const rows = db.pragma('quick_check(3)') as { quick_check: string }[]
  if (rows.length !== 1 || rows[0]!.quick_check !== 'ok') throw damaged(file, rows.map((r) => r.quick_check).join('; '))
}

/** Whether `err` is the one line of a damaged state (damaged()): serve stops on it (run.ts), once. */
export function isStateDamaged(err: unknown): boolean {
  return err instanceof ExtfsError && err.exitCode === ExitCode.StateDamaged
}

/** SQLite's words for a file that is not a sound database (SQLITE_CORRUPT, SQLITE_NOTADB and their extended codes). */
function isDamage(e: { code?: string }): boolean {
  return /^SQLITE_(CORRUPT|NOTADB)/.test(e.code ?? '')
}

/**
 * The one line a damaged state gives, with what to do. Moving the file aside loses what only the state
 * held: the nonces (serve then refuses requests signed before it started, so none can be replayed)
 * and its released marks (an image whose record is unreadable too is then answered "unknown").
 */
export function damaged(file: string, what: string): ExtfsError {
  return new ExtfsError(ExitCode.StateDamaged, `state database ${file} is damaged (${what.replace(/\s+/g, ' ').trim()}): ` +
    'move it aside (with any -wal beside it) and start serve again; it then starts a fresh state from the config-ID records, ' +
    'refuses requests signed before it started, and answers "unknown" for an image whose record does not prove it current')
}

function imageRow(r: RawImage): ImageRow {
  return { name: r.name, manifestPath: r.manifest_path, c0: r.c0, configId: r.config_id, state: r.state, updatedAt: r.updated_at }
}

function deltaRow(r: RawDelta): DeltaRow {
  const d: DeltaRow = { image: r.image, seq: r.seq, from: r.from_id, to: r.to_id, createdAt: r.created_at }
  if (r.path !== null) d.path = r.path
  if (r.blob !== null) d.blob = r.blob
  return d
}
