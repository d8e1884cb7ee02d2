/**
 * Instants as text, made from their UTC fields. Not Date.prototype.toISOString or toUTCString: on V8
 * (Node 20 and 22) the first call of either also looks up the local time zone's display names in ICU,
 * which then stay resident (1 MiB on Node 20, 1.6 MiB on Node 22, measured), for an agent whose every
 * date is UTC. A follower waiting for a notice writes dates in two places only, both here: its log lines
 * and its API's Date header. (Once the AWS SDK signs a request, it has loaded them anyway.)
 */
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

const pad = (n: number, width = 2): string => String(n).padStart(width, '0');

/** `2026-12-07T23:16:49.012Z`, as toISOString writes it (years 0 to 9999). */
export function isoTimestamp(epochMs: number): string {
  const d = new Date(epochMs);
  return `${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}T${clock(d)}.${pad(d.getUTCMilliseconds(), 3)}Z`;
}

/** `Mon, 07 Dec 2026 23:16:49 GMT`, the HTTP date (RFC 9110's IMF-fixdate), as toUTCString writes it. */
export function httpDate(epochMs: number): string {
  const d = new Date(epochMs);
  return `${DAYS[d.getUTCDay()]}, ${pad(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${pad(d.getUTCFullYear(), 4)} ${clock(d)} GMT`;
}

function clock(d: Date): string {
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}
