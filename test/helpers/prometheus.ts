// Prometheus' text exposition format (0.0.4), read strictly: every line a HELP, a TYPE or a sample of a
// family whose TYPE came first, labels quoted and escaped as the format says. A metric renamed, a label
// renamed or a sample of no declared family fails the read or the look-up, so the tests that scrape
// serve cannot pass on a near miss.
import http from 'node:http'

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped'

export interface Exposition {
  /** Family name → its TYPE. */
  types: Map<string, MetricType>
  /** `name{label="value",...}` with labels sorted by name → value. */
  samples: Map<string, number>
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*'
const HELP_RE = new RegExp(`^# HELP (${NAME}) .*$`)
const TYPE_RE = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`)
const SAMPLE_RE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: -?[0-9]+)?$`)
const LABEL_RE = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(?:,|$)/
/** Go's strconv.ParseFloat, which Prometheus reads values with: NaN and Inf in any case (prom-client writes `Nan`). */
const VALUE_RE = /^(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?inf(?:inity)?|nan)$/i

export function parseExposition(text: string): Exposition {
  const types = new Map<string, MetricType>()
  const samples = new Map<string, number>()
  const lines = text.split('\n')
  if (lines.pop() !== '') throw new Error('exposition does not end with a newline')
  for (const [i, line] of lines.entries()) {
    const where = `line ${i + 1} ${JSON.stringify(line)}`
    if (line === '') continue // the format allows empty lines (prom-client puts one between families)
    if (line.startsWith('#')) {
      const type = TYPE_RE.exec(line)
      if (type) {
        if (types.has(type[1]!)) throw new Error(`${where}: second TYPE`)
        types.set(type[1]!, type[2] as MetricType)
      } else if (!HELP_RE.test(line)) throw new Error(`${where}: neither HELP nor TYPE`)
      continue
    }
    const m = SAMPLE_RE.exec(line)
    if (!m || !VALUE_RE.test(m[3]!)) throw new Error(`${where}: not a sample`)
    const name = m[1]!
    if (!types.has(familyOf(name, types))) throw new Error(`${where}: no TYPE declared for ${name}`)
    const key = sampleKey(name, parseLabels(m[2] ?? '', where))
    if (samples.has(key)) throw new Error(`${where}: sample repeated`)
    samples.set(key, valueOf(m[3]!))
  }
  return { types, samples }
}

/** The value of one sample; throws when the exposition has no such sample (a wrong name or label). */
export function sample(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const v = e.samples.get(sampleKey(name, labels))
  if (v === undefined) throw new Error(`no sample ${sampleKey(name, labels)}`)
  return v
}

/** GET `url` (plain HTTP): status, content type, body. */
export function scrape(url: string, method = 'GET'): Promise<{ status: number; type?: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode!, type: res.headers['content-type'], body }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** Scrapes `url` and reads it strictly; a status other than 200 throws. */
export async function scrapeMetrics(url: string): Promise<Exposition> {
  const r = await scrape(url)
  if (r.status !== 200) throw new Error(`${url}: ${r.status} ${r.body}`)
  if (!/^text\/plain; version=0\.0\.4/.test(r.type ?? '')) throw new Error(`${url}: content-type ${r.type}`)
  return parseExposition(r.body)
}

/** A histogram's or summary's series belong to the family without _bucket/_sum/_count. */
function familyOf(name: string, types: Map<string, MetricType>): string {
  const base = name.replace(/_(bucket|sum|count)$/, '')
  const t = types.get(base)
  return base !== name && (t === 'histogram' || t === 'summary') ? base : name
}

function parseLabels(text: string, where: string): Record<string, string> {
  const labels: Record<string, string> = {}
  let rest = text
  while (rest !== '') {
    const m = LABEL_RE.exec(rest)
    if (!m) throw new Error(`${where}: bad labels at ${JSON.stringify(rest)}`)
    if (m[1]! in labels) throw new Error(`${where}: label ${m[1]} twice`)
    labels[m[1]!] = m[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c))
    rest = rest.slice(m[0].length)
  }
  return labels
}

function valueOf(text: string): number {
  if (/nan/i.test(text)) return NaN
  if (/inf/i.test(text)) return text.startsWith('-') ? -Infinity : Infinity
  return Number(text)
}

function sampleKey(name: string, labels: Record<string, string>): string {
  const parts = Object.keys(labels).sort().map((k) => `${k}=${JSON.stringify(labels[k])}`)
  return `${name}{${parts.join(',')}}`
}
