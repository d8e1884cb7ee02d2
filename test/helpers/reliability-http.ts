/**
 * HTTP on a raw socket, for requests no well-behaved client would send: any method token, any
 * request target bytes, duplicate or malformed headers, bodies that disagree with their length, and
 * a chosen source address (any 127.x.y.z on Linux), so per-address limits can be exercised.
 */
import { connect, type Socket } from 'node:net';

export interface RawAnswer {
  /** The status code, or undefined when the server closed without answering. */
  readonly status: number | undefined;
  readonly head: string;
  readonly body: string;
  /** Milliseconds until the answer was complete (or the socket closed). */
  readonly ms: number;
}

export interface RawRequest {
  readonly method: string;
  /** The request target exactly as sent (path and query). */
  readonly target: string;
  readonly headers?: readonly (readonly [string, string])[];
  readonly body?: Buffer | string;
  /** Add a Content-Length matching the body (default true when a body is given). */
  readonly contentLength?: boolean;
  readonly localAddress?: string;
  /** Leave out the Host header, which HTTP/1.1 requires. */
  readonly withoutHost?: boolean;
}

/** Sends one request with "Connection: close" and reads until the server closes; rejects after `timeoutMs` (a hang). */
export async function rawRequest(port: number, request: RawRequest, timeoutMs = 8_000): Promise<RawAnswer> {
  const body = request.body === undefined ? undefined : Buffer.isBuffer(request.body) ? request.body : Buffer.from(request.body, 'utf8');
  const lines = [`${request.method} ${request.target} HTTP/1.1`, ...(request.withoutHost ? [] : ['Host: 127.0.0.1']), 'Connection: close'];
  for (const [name, value] of request.headers ?? []) lines.push(`${name}: ${value}`);
  if (body && request.contentLength !== false) lines.push(`Content-Length: ${body.length}`);
  const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
  const { text, ms } = await rawExchange(port, body ? [head, body] : [head], { localAddress: request.localAddress, timeoutMs, describe: `${request.method} ${request.target.slice(0, 200)}` });
  return parseAnswer(text, ms);
}

/**
 * Writes `chunks` on a new connection and reads until the server closes it; rejects after `timeoutMs`
 * (a hang). `end`: then half-close, as a client does that has nothing more to send.
 */
export function rawExchange(
  port: number,
  chunks: readonly Buffer[],
  options: { localAddress?: string; timeoutMs?: number; describe?: string; end?: boolean } = {},
): Promise<{ text: string; ms: number }> {
  const started = Date.now();
  const { localAddress, timeoutMs = 8_000, describe = 'the request', end = false } = options;
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
    const received: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer within ${timeoutMs} ms to ${describe}`));
    }, timeoutMs);
    socket.on('connect', () => {
      for (const chunk of chunks) socket.write(chunk);
      if (end) socket.end();
    });
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    // The server may close while we still write (e.g. after a 413): what it answered is what counts.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ text: Buffer.concat(received).toString('latin1'), ms: Date.now() - started });
    });
  });
}

/** The first final answer in what a server sent, after any interim ones (100 Continue to "Expect: 100-continue"). */
export function parseAnswer(sent: string, ms: number): RawAnswer {
  let text = sent;
  while (/^HTTP\/1\.[01] 1\d\d /.test(text) && text.includes('\r\n\r\n')) text = text.slice(text.indexOf('\r\n\r\n') + 4);
  const split = text.indexOf('\r\n\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1];
  return {
    status: status === undefined ? undefined : Number(status),
    head: split === -1 ? text : text.slice(0, split),
    body: split === -1 ? '' : text.slice(split + 4),
    ms,
  };
}

/** An open connection that writes `bytes` one byte every `everyMs`; resolves when the server closes it. */
export function trickle(port: number, bytes: string, everyMs: number, localAddress?: string): { socket: Socket; closed: Promise<{ ms: number; answer: string; sent: number }> } {
  const started = Date.now();
  const socket = connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
  let sent = 0;
  let answer = '';
  let timer: NodeJS.Timeout | undefined;
  socket.on('connect', () => {
    timer = setInterval(() => {
      if (sent >= bytes.length || socket.destroyed) return clearInterval(timer);
      socket.write(bytes[sent++]!);
    }, everyMs);
  });
  socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
  socket.on('error', () => undefined);
  const closed = new Promise<{ ms: number; answer: string; sent: number }>((resolve) =>
    socket.on('close', () => {
      clearInterval(timer);
      resolve({ ms: Date.now() - started, answer, sent });
    }),
  );
  return { socket, closed };
}
