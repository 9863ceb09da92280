// The mover following `extfs serve` (docs/remap.md, "Mounting from serve: the lease").
//
// The initiator's answers are mirrored into a private directory as the files of the shared-storage
// mode: the manifest, a config-ID record and the delta files. So the view, the config check and the
// chain follower are the same code in both modes; what this file adds is how those files are kept
// up to date, and the lease: every answer says the image was current at some moment, and opens and
// reads are served on it (in C, without asking anyone) for the lease after that moment. A long poll
// renews it all the time; once it has run out, each open and read waits for one synchronous answer
// (coalesced, at most RENEW_TIMEOUT_MS) and is refused with ESTALE when none comes.
import fs from 'node:fs'
import path from 'node:path'
import type { Logger } from 'pino'
import { ConfigClient, type ConfigState } from '../service/client'
import { writeRecord, type ConfigCheck, type Verdict } from '../configid/record'
import { writeFileAtomic } from '../manifest/io'
import { oneLine, StaleError } from '../errors'

/** Where mirrors live: one directory per serving process, removed when it stops. */
const MIRROR_ROOT = '/run/extfs/remote'
/** A synchronous renewal must end before C gives up on its answer (XT_JUDGE_TIMEOUT_S, 5 s). */
const RENEW_TIMEOUT_MS = 3_000
/** A failed renewal is the answer for this long: a dead initiator must not cost every open 3 s. */
const FAILURE_HOLD_MS = 1_000
/** Longest long poll; the server holds at most 60 s. */
const MAX_WAIT_MS = 25_000
/** Least time between two long polls, ms. */
const MIN_POLL_MS = 250
/** Retry delays of the long poll after an error, ms. */
const RETRY_MIN_MS = 250
const RETRY_MAX_MS = 5_000

export interface RemoteOptions {
  url: string
  key: Buffer
  /** CA certificate(s) for https. */
  ca?: Buffer
  /** The mover's own cap on the lease, ms: the smaller of this and the initiator's is used. */
  leaseCapMs?: number
  log: Logger
}

/** What the remote image drives: the engine's lease (NativeEngine.setLease). */
export interface LeaseTarget {
  setLease(ms: number): void
}

/** The mirrors a serving process `pid` left (it died without cleaning up: kill -9). */
export function removeMirrorsOf(pid: number): void {
  let names: string[] = []
  try {
    names = fs.readdirSync(MIRROR_ROOT)
  } catch {
    return
  }
  for (const n of names) if (n.startsWith(`${pid}-`)) fs.rmSync(path.join(MIRROR_ROOT, n), { recursive: true, force: true })
}

export class RemoteImage {
  readonly manifestPath: string
  readonly recordFile: string
  private readonly client: ConfigClient
  /** The last answer taken (open() takes the first). */
  private state?: ConfigState
  /** Opens and reads may be served until then (performance.now() ms). */
  private leaseUntil = 0
  private target?: LeaseTarget
  private onChange?: () => void
  private renewing?: Promise<void>
  /** Answers are mirrored one after the other. */
  private taking: Promise<void> = Promise.resolve()
  private failure?: { at: number; reason: string }
  /**
   * Why the initiator's last answer was "unknown" (it cannot prove the image current), and when it was
   * true: until a later current answer, no lease and no opens.
   */
  private doubt?: { reason: string; answeredAt: number }
  private stopped = false
  private unreachableSince?: number

  private constructor(private readonly opts: RemoteOptions, readonly dir: string) {
    this.client = new ConfigClient(opts.url, opts.key, { ca: opts.ca })
    this.manifestPath = path.join(dir, 'manifest.json')
    this.recordFile = path.join(dir, 'record.json')
  }

  /** Ask the initiator for the image and mirror it; nothing is left behind when this throws. */
  static async open(opts: RemoteOptions): Promise<RemoteImage> {
    fs.mkdirSync(MIRROR_ROOT, { recursive: true, mode: 0o700 })
    const remote = new RemoteImage(opts, fs.mkdtempSync(path.join(MIRROR_ROOT, `${process.pid}-`)))
    try {
      const state = await remote.client.config()
      if (state.state === 'released') throw new StaleError(`frozen image ${state.image} at ${opts.url} was released`)
      if (state.state === 'unknown') throw new StaleError(remote.doubtOf(state))
      writeFileAtomic(remote.manifestPath, await remote.client.manifest())
      await remote.take(state)
      return remote
    } catch (err) {
      remote.close()
      throw err
    }
  }

  /**
   * For `extfs status`: released, why the initiator cannot prove the image current (its last answer was
   * "unknown": the line opens are refused with, serve's reason in it), the lease left, and since when
   * the initiator has been unreachable (ms).
   */
  leaseStatus(): { released: boolean; unknown?: string; leftMs: number; lastAnswerMsAgo?: number; unreachableMs?: number } {
    const now = performance.now()
    return {
      released: this.released,
      unknown: this.doubt?.reason,
      leftMs: Math.round(this.leaseLeft()),
      lastAnswerMsAgo: this.state ? Math.round(now - this.state.answeredAt) : undefined,
      unreachableMs: this.unreachableSince === undefined ? undefined : Math.round(now - this.unreachableSince),
    }
  }

  /** The lease at this moment, ms (0 once run out). */
  leaseLeft(): number {
    return Math.max(0, this.leaseUntil - performance.now())
  }

  /**
   * Start following: the engine's lease is kept in step from now on, and `onChange` is called (JS
   * thread) after the mirror changed, so deltas apply even while no file is being opened.
   */
  attach(target: LeaseTarget, onChange: () => void): void {
    this.target = target
    this.onChange = onChange
    target.setLease(this.released ? 0 : this.leaseLeft())
    void this.follow()
  }

  /** The config check to give the view: `inner` (the chain follower on the mirror) under the lease. */
  guard(inner: ConfigCheck): ConfigCheck {
    return {
      file: inner.file,
      check: (): Verdict | Promise<Verdict> => {
        // Released is final: the follower refuses from the mirrored record, nobody needs asking.
        if (this.released || this.leaseLeft() > 0) return inner.check()
        return this.renew().then(() => inner.check(), (err: Error) => ({ ok: false, reason: err.message }))
      },
    }
  }

  close(): void {
    this.stopped = true
    this.client.close()
    fs.rmSync(this.dir, { recursive: true, force: true })
  }

  // ---------------------------------------------------------------------------------------------

  private get released(): boolean {
    return this.state?.state === 'released'
  }

  private leaseMs(s: ConfigState): number {
    return Math.min(s.leaseMs, this.opts.leaseCapMs ?? Infinity)
  }

  /** The long poll: each answer (changed or not) renews the lease; errors only let it run out. */
  private async follow(): Promise<void> {
    let retry = RETRY_MIN_MS
    while (!this.stopped && !this.released) {
      try {
        // Held at most half the lease, so an answer arrives before the last one's lease ran out.
        const known = this.state! // open() took the first answer
        const wait = Math.min(MAX_WAIT_MS, Math.floor(this.leaseMs(known) / 2))
        await this.take(await this.client.config(known.configId, wait))
        if (this.doubt !== undefined) {
          // serve holds such polls only while its config ID is the one asked after: do not ask in a tight loop
          await new Promise((r) => setTimeout(r, retry))
          retry = Math.min(RETRY_MAX_MS, retry * 2)
          continue
        }
        retry = RETRY_MIN_MS
        // A lease too short to hold a poll for is renewed by opens instead: do not ask in a tight loop.
        if (wait < MIN_POLL_MS) await new Promise((r) => setTimeout(r, MIN_POLL_MS - wait))
      } catch (err) {
        if (this.stopped) return
        this.unreachable(err as Error)
        await new Promise((r) => setTimeout(r, retry))
        retry = Math.min(RETRY_MAX_MS, retry * 2)
      }
    }
  }

  /** One synchronous answer for opens and reads waiting on a lease that ran out; shared by all of them. */
  private renew(): Promise<void> {
    const held = this.failure && performance.now() - this.failure.at < FAILURE_HOLD_MS ? this.failure : undefined
    if (held) return Promise.reject(new Error(held.reason))
    this.renewing ??= (async () => {
      let timer: NodeJS.Timeout | undefined
      const deadline = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${RENEW_TIMEOUT_MS / 1000} s`)), RENEW_TIMEOUT_MS)
      })
      try {
        await this.take(await Promise.race([this.client.config(undefined, 0, RENEW_TIMEOUT_MS), deadline]))
      } catch (err) {
        const expired = Math.round(performance.now() - this.leaseUntil)
        this.unreachable(err as Error)
        throw this.failed(`initiator ${this.opts.url} not reachable (${(err as Error).message}); the lease expired ${expired} ms ago`)
      } finally {
        clearTimeout(timer)
        this.renewing = undefined
      }
      if (this.doubt !== undefined) throw this.failed(this.doubt.reason)
      this.failure = undefined
    })()
    return this.renewing
  }

  /** A renewal that failed with `reason`: held as the answer for FAILURE_HOLD_MS. */
  private failed(reason: string): Error {
    this.failure = { at: performance.now(), reason }
    return new Error(reason)
  }

  /** The one line an "unknown" answer gives. */
  private doubtOf(s: ConfigState): string {
    return `initiator ${this.opts.url} cannot prove frozen image ${s.image} current (${oneLine(s.reason ?? 'no reason given')}): not served`
  }

  /**
   * Mirror an answer: new delta files first, then the record, then the lease. In that order, an open
   * served on the renewed lease already finds the new record (C sees its stamp change and asks).
   * Answers of the long poll and of a renewal may overtake each other: they are taken one at a
   * time, an older one changes nothing, and the lease only grows.
   */
  private take(s: ConfigState): Promise<void> {
    const next = this.taking.then(() => this.takeNow(s))
    this.taking = next.catch(() => undefined)
    return next
  }

  private async takeNow(s: ConfigState): Promise<void> {
    const known = this.state
    if (known && s.image !== known.image) throw new Error(`the initiator now answers for image ${s.image}, not ${known.image}`)
    if (this.released) return
    if (s.state === 'unknown') {
      // Not current: the lease ends now and is not renewed until an answer says current again.
      if (this.doubt === undefined) this.opts.log.error({ url: this.opts.url, reason: s.reason }, 'initiator cannot prove the image current: opens refused')
      this.doubt = { reason: this.doubtOf(s), answeredAt: s.answeredAt }
      this.leaseUntil = 0
      this.target?.setLease(0)
      return
    }
    // An answer made before the "unknown" one (a long poll and a renewal overtaking each other) proves nothing now.
    if (this.doubt !== undefined && s.answeredAt < this.doubt.answeredAt) return
    this.doubt = undefined
    if (known && s.deltas.length < known.deltas.length) return
    const mirrored = known?.deltas.length ?? 0 // delta-1 .. delta-n are in the directory
    for (let seq = mirrored + 1; seq <= s.deltas.length; seq++) {
      writeFileAtomic(path.join(this.dir, `delta-${seq}`), await this.client.delta(seq))
    }
    const changed = !known || s.configId !== known.configId || s.state !== known.state || s.deltas.length !== mirrored
    if (changed) {
      writeRecord(this.recordFile, s.configId, s.state, { deltas: s.deltas.map((seq) => `delta-${seq}`) })
    }
    this.state = s
    this.leaseUntil = s.state === 'released' ? 0 : Math.max(this.leaseUntil, s.answeredAt + this.leaseMs(s))
    if (this.unreachableSince !== undefined) {
      this.opts.log.info({ url: this.opts.url, afterMs: Math.round(performance.now() - this.unreachableSince) }, 'initiator reachable again')
      this.unreachableSince = undefined
    }
    this.target?.setLease(this.leaseLeft())
    if (changed) this.onChange?.()
  }

  /** Logged once per outage: the view goes on serving until the lease runs out, then refuses. */
  private unreachable(err: Error): void {
    if (this.unreachableSince !== undefined) return
    this.unreachableSince = performance.now()
    this.opts.log.warn({ url: this.opts.url, err: err.message, leaseLeftMs: Math.round(this.leaseLeft()) }, 'initiator unreachable; opens and reads are served until the lease runs out')
  }
}
