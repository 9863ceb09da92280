// The mover's side of `extfs serve`: signed requests, answers checked against their MAC before a byte
// of them is believed, one-line errors. `baseUrl` names one image: http(s)://initiator:7070/<image>.
import http from 'node:http'
import https from 'node:https'
import { ExtfsError, ExitCode } from '../errors'
import { DEFAULT_MAX_MANIFEST_BYTES } from '../manifest/io'
import { DEFAULT_MAX_DELTA_BYTES } from '../delta/io'
import { signRequest, verifyResponseMac } from './auth'
import { CONFIG_ID } from '../manifest/validate'
import { formatConfigQuery, IMAGE_NAME, parseConfigAnswer, parseRemapAnswer, type ConfigAnswer, type RemapAnswer } from './protocol'

export interface ClientOptions {
  /** CA certificate(s) to trust for https (a self-signed initiator's certificate). */
  ca?: string | Buffer
  /** How long to wait for an answer beyond the long poll's own wait, ms (default 10 s). */
  timeoutMs?: number
  /** Largest manifest accepted, bytes (default the manifest reader's 1 GiB). */
  maxManifestBytes?: number
}

/** What the initiator said about the image, and until when (this host's clock, unix ms) it may be trusted. */
export interface ConfigState extends Omit<ConfigAnswer, 'heldMs'> {
  /** Request sent + time the server held it + leaseMs: opens may be served until then. */
  leaseUntil: number
  /**
   * When the answer was true, on this host's monotonic clock (performance.now(), ms): the request's
   * sending plus the time the server held it. A lease counted from here never runs long when the
   * wall clock is stepped.
   */
  answeredAt: number
}

/** The initiator could not be asked, refused, or answered something that cannot be believed. */
export class ConfigServiceError extends ExtfsError {
  constructor(message: string, readonly status?: number) {
    super(ExitCode.Service, message)
    this.name = 'ConfigServiceError'
  }
}

const JSON_MAX_BYTES = 16 * 1024 * 1024

export class ConfigClient {
  /** The image's name on the server. */
  readonly image: string
  private readonly origin: URL
  private readonly agent: http.Agent
  private readonly timeoutMs: number

  constructor(baseUrl: string, private readonly key: Buffer, private readonly opts: ClientOptions = {}) {
    let url: URL
    try {
      url = new URL(baseUrl)
    } catch {
      throw new ExtfsError(ExitCode.Usage, `${baseUrl} is not a URL (expected http(s)://host:port/<image>)`)
    }
    const name = url.pathname.replace(/^\//, '')
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || !IMAGE_NAME.test(name) || url.search || url.hash || url.username) {
      throw new ExtfsError(ExitCode.Usage, `${baseUrl}: expected http(s)://host:port/<image>`)
    }
    this.image = name
    this.origin = new URL(url.origin)
    this.timeoutMs = opts.timeoutMs ?? 10_000
    this.agent = url.protocol === 'https:' ? new https.Agent({ keepAlive: true, ca: opts.ca }) : new http.Agent({ keepAlive: true })
  }

  /** Names of every image the server answers for. */
  async images(): Promise<string[]> {
    const v = await this.json('GET', '/images', 0)
    if (!Array.isArray(v.images) || !v.images.every((n: unknown) => typeof n === 'string')) throw this.protocol('/images', 'no images list')
    return v.images as string[]
  }

  /** The manifest file's bytes (the caller parses and checks it with the key as for a local file). */
  async manifest(): Promise<Buffer> {
    const r = await this.request('GET', `/images/${this.image}/manifest`, this.opts.maxManifestBytes ?? DEFAULT_MAX_MANIFEST_BYTES, 0)
    return r.body
  }

  /**
   * The image's config. With `after`, the server holds the request up to `waitMs` (at most 60 s) until
   * the config ID differs from `after` or the image is released, then answers (also when nothing changed).
   */
  async config(after?: string, waitMs = 0, timeoutMs = this.timeoutMs): Promise<ConfigState> {
    if (after !== undefined && !CONFIG_ID.test(after)) throw new ExtfsError(ExitCode.Usage, `after: ${JSON.stringify(after)} is not a config ID`)
    if (!Number.isSafeInteger(waitMs) || waitMs < 0) throw new ExtfsError(ExitCode.Usage, `waitMs must be milliseconds, got ${waitMs}`)
    const target = `/images/${this.image}/config${formatConfigQuery({ after, waitMs })}`
    const sentAt = Date.now()
    const sentMono = performance.now()
    const v = parseConfigAnswer(await this.json('GET', target, waitMs, timeoutMs))
    const elapsed = performance.now() - sentMono
    if (!v) throw this.protocol(target, 'malformed config answer')
    // The answer was true when it was made: at least heldMs after sending, never later than now.
    const held = Math.min(v.heldMs, elapsed)
    return {
      image: v.image, configId: v.configId, state: v.state, reason: v.reason, deltas: v.deltas, leaseMs: v.leaseMs,
      leaseUntil: sentAt + held + v.leaseMs, answeredAt: sentMono + held,
    }
  }

  /** Delta `seq`'s file bytes (checked by the caller: chain, signature, validation). */
  async delta(seq: number): Promise<Buffer> {
    if (!Number.isSafeInteger(seq) || seq < 1) throw new ExtfsError(ExitCode.Usage, `delta seq must be 1 or more, got ${seq}`)
    return (await this.request('GET', `/images/${this.image}/deltas/${seq}`, DEFAULT_MAX_DELTA_BYTES, 0)).body
  }

  /**
   * Ask the initiator to re-map the image now. A remap maps every file of the image (seconds for a large
   * one, and serve does nothing else meanwhile): give `timeoutMs` to wait longer than for other answers.
   */
  async remap(timeoutMs = this.timeoutMs): Promise<RemapAnswer> {
    const target = `/images/${this.image}/remap`
    const v = parseRemapAnswer(await this.json('POST', target, 0, timeoutMs))
    if (!v) throw this.protocol(target, 'malformed remap answer')
    return v
  }

  /** Closes kept-alive connections. */
  close(): void {
    this.agent.destroy()
  }

  // ---------------------------------------------------------------------------------------------

  private async json(method: string, target: string, waitMs: number, timeoutMs = this.timeoutMs): Promise<Record<string, any>> {
    const r = await this.request(method, target, JSON_MAX_BYTES, waitMs, timeoutMs)
    let v: unknown
    try {
      v = JSON.parse(r.body.toString('utf8'))
    } catch {
      throw this.protocol(target, 'answer is not JSON')
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw this.protocol(target, 'answer is not a JSON object')
    return v as Record<string, unknown>
  }

  private protocol(target: string, what: string): ConfigServiceError {
    return new ConfigServiceError(`${this.origin.origin}${target}: ${what}`)
  }

  /** One signed request; resolves only with a 200 whose MAC verified. */
  private request(method: string, target: string, maxBytes: number, waitMs: number, timeoutMs = this.timeoutMs): Promise<{ status: number; body: Buffer }> {
    const headers = signRequest(this.key, method, target)
    const nonce = headers['X-Extfs-Nonce']
    const where = `${this.origin.origin}${target}`
    const mod = this.origin.protocol === 'https:' ? https : http
    return new Promise((resolve, reject) => {
      const fail = (msg: string, status?: number) => reject(new ConfigServiceError(msg, status))
      const req = mod.request(new URL(target, this.origin), { method, headers: { ...headers, 'content-length': 0 }, agent: this.agent })
      req.setTimeout(waitMs + timeoutMs, () => req.destroy(new Error(`no answer within ${((waitMs + timeoutMs) / 1000).toFixed(1)} s`)))
      req.on('error', (err: NodeJS.ErrnoException) => fail(`${where}: ${err.code ?? err.message}${certificateHint(err)}`))
      req.on('response', (res) => {
        const chunks: Buffer[] = []
        let got = 0
        res.on('data', (c: Buffer) => {
          got += c.length
          if (got > maxBytes) {
            req.destroy()
            fail(`${where}: answer over ${maxBytes} bytes`)
          } else chunks.push(c)
        })
        res.on('error', (err) => fail(`${where}: ${err.message}`))
        res.on('end', () => {
          if (got > maxBytes) return
          const body = Buffer.concat(chunks)
          const status = res.statusCode ?? 0
          const authentic = verifyResponseMac(this.key, status, nonce, body, res.headers['x-extfs-auth'])
          const said = errorOf(body)
          if (!authentic) {
            return fail(`${where}: answer not authenticated (forged, or the initiator has another key)${status !== 200 ? `; it said ${status}${said ? ` ${said}` : ''}` : ''}`, status)
          }
          if (status !== 200) return fail(`${where}: ${status}${said ? ` ${said}` : ''}`, status)
          resolve({ status, body })
        })
      })
      req.end()
    })
  }
}

/** For a refused TLS certificate, Node's words for it and what to do; '' for anything else. */
function certificateHint(err: NodeJS.ErrnoException): string {
  if (!/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME/.test(err.code ?? '')) return ''
  return ` (${err.message.replace(/[\r\n]+/g, ' ')}; give the CA that signed serve's certificate with --ca, for the address in the URL)`
}

/** The one-line error of a JSON error answer, if that is what `body` is. */
function errorOf(body: Buffer): string | undefined {
  if (body.length > 4096) return undefined
  try {
    const v = JSON.parse(body.toString('utf8'))
    return typeof v?.error === 'string' ? v.error.replace(/[\r\n]+/g, ' ') : undefined
  } catch {
    return undefined
  }
}
