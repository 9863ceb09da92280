// What `extfs serve` tells its metrics: the events the registry, the remap schedule and the routes
// report, and the small fixed sets of label values they report them with. No dependencies: serve
// loads prom-client (prometheus.ts) only with --metrics-listen; without it every event goes to
// NO_METRICS. Labels are image names (the manifests' base names) and the values below, never paths,
// addresses or anything else a request could make up.

/** Why a request got an answer other than 200; one series each (docs/operations.md). */
export const REFUSAL_REASONS = [
  /** No X-Extfs-Time, X-Extfs-Nonce or X-Extfs-Auth header. */
  'unauthenticated',
  /** The headers are there but not of their format. */
  'malformed_auth',
  /** The request's time is further from this host's clock than --skew. */
  'skew',
  /** The MAC does not match: altered, or signed with another key. */
  'bad_signature',
  /** The nonce was seen before. */
  'replay',
  /** A request announcing a body (requests have none): answered 413 unread, its connection closed. */
  'too_large',
  /** No such resource, or an image name that is not one. */
  'bad_path',
  /** A resource asked for with a method it does not answer. */
  'bad_method',
  /** A config query or a delta number out of shape. */
  'bad_query',
  /** An image this serve does not serve. */
  'unknown_image',
  /** A delta the image's chain does not have. */
  'no_delta',
  /** A manifest or delta file that could not be read or is over its limit. */
  'unreadable',
  /** A remap asked for failed (counted in the remaps too). */
  'remap_failed',
  /** A connection over --max-connections-per-client or --max-connections: closed at once, unanswered. */
  'too_many_connections',
] as const
export type RefusalReason = (typeof REFUSAL_REASONS)[number]

/** What started a remap: the schedule (--interval) or a mover's POST remap. */
export const REMAP_TRIGGERS = ['schedule', 'request'] as const
export type RemapTrigger = (typeof REMAP_TRIGGERS)[number]

export const REMAP_RESULTS = ['unchanged', 'remapped', 'released', 'failed'] as const
export type RemapOutcome = (typeof REMAP_RESULTS)[number]

export interface ServeMetrics {
  /** `image` is served (at start): its series start at zero. */
  image(image: string): void
  /** The image's published config: config ID, chain length, released; `added` deltas published now. */
  published(image: string, p: { configIdChanged: boolean; deltas: number; added: number; released: boolean }): void
  /** A config answer went to `remote` (an address); `leaseMs` when it grants a lease (image current). */
  configAnswered(image: string, remote: string | undefined, leaseMs: number | undefined): void
  /** A remap ended after `seconds`. */
  remapped(image: string, trigger: RemapTrigger, outcome: RemapOutcome, seconds: number): void
  refused(reason: RefusalReason): void
}

/** Serve without --metrics-listen. */
export const NO_METRICS: ServeMetrics = {
  image: () => undefined,
  published: () => undefined,
  configAnswered: () => undefined,
  remapped: () => undefined,
  refused: () => undefined,
}
