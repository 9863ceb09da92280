// The state of `extfs serve` in SQLite (better-sqlite3): the images it answers for, each one's current
// config ID and state, the delta history that leads there, and the nonces seen recently (replay
// protection that survives a restart). WAL journal, one writer: the database is opened with an
// exclusive lock, so a second `serve` on the same file is refused instead of racing the first.
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
`

interface RawImage { name: string; manifest_path: string; c0: string; config_id: string; state: ImageState; updated_at: number }
interface RawDelta { image: string; seq: number; from_id: string; to_id: string; path: string | null; blob: Buffer | null; created_at: number }

export class ServeState implements NonceStore {
  private readonly db: Database.Database
  private readonly stmts: ReturnType<ServeState['prepare']>
  private lastPurge = 0

  /** Opens (creating if needed) the database at `file`; ':memory:' for tests. */
  constructor(readonly file: string) {
    if (file !== ':memory:') fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 })
    try {
      this.db = new Database(file, { timeout: 0 })
      // Exclusive before WAL: the WAL index then lives in this process's memory and no other process
      // can open the database while we hold it (one writer).
      this.db.pragma('locking_mode = EXCLUSIVE')
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
    } catch (err) {
      if (err instanceof ExtfsError) throw err
      const e = err as Error & { code?: string }
      if (e.code === 'SQLITE_BUSY') throw new ExtfsError(ExitCode.Usage, `state database ${file} is in use (another extfs serve?)`)
      throw new ExtfsError(ExitCode.Usage, `cannot open state database ${file}: ${e.code ?? ''} ${e.message}`.replace(/\s+/g, ' ').trim())
    }
    this.stmts = this.prepare()
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
    return this.stmts.images.all().map(imageRow)
  }

  image(name: string): ImageRow | undefined {
    const r = this.stmts.image.get(name)
    return r ? imageRow(r) : undefined
  }

  /**
   * Registers `name` for `manifestPath` with chain start `c0`. Kept as it is when the same manifest and
   * c0 are registered again (a restart); a different manifest or c0 (a new export under the same name)
   * starts over: config c0, current, no deltas.
   */
  registerImage(name: string, manifestPath: string, c0: string, now = Date.now()): ImageRow {
    const had = this.image(name)
    if (had && had.manifestPath === manifestPath && had.c0 === c0) return had
    const row: ImageRow = { name, manifestPath, c0, configId: c0, state: 'current', updatedAt: now }
    this.db.transaction(() => {
      this.stmts.dropDeltas.run(name)
      this.stmts.upsertImage.run(row)
    })()
    return row
  }

  /**
   * Moves `name` to `configId`/`state`, first dropping deltas from `keepBelow` on (a chain that was
   * rewritten) and then adding `deltas`, in one transaction: a reader never sees a config ID without
   * the deltas that lead to it.
   */
  publish(name: string, configId: string, state: ImageState, deltas: Omit<DeltaRow, 'image' | 'createdAt'>[], keepBelow?: number, now = Date.now()): void {
    this.db.transaction(() => {
      if (keepBelow !== undefined) this.stmts.dropDeltasFrom.run(name, keepBelow)
      for (const d of deltas) this.stmts.addDelta.run(name, d.seq, d.from, d.to, d.path ?? null, d.blob ?? null, now)
      const r = this.stmts.setConfig.run(configId, state, now, name)
      if (r.changes !== 1) throw new Error(`state: no image ${name}`)
    })()
  }

  deltas(name: string): DeltaRow[] {
    return this.stmts.deltas.all(name).map(deltaRow)
  }

  delta(name: string, seq: number): DeltaRow | undefined {
    const r = this.stmts.delta.get(name, seq)
    return r ? deltaRow(r) : undefined
  }

  /** NonceStore: one insert per request; expired nonces are purged at most once a minute. */
  claim(nonce: string, expiresAt: number, now: number): boolean {
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

  close(): void {
    if (this.db.open) this.db.close()
  }
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
