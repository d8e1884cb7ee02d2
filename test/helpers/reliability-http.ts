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
}

/** Sends one request with "Connection: close" and reads until the server closes; rejects after `timeoutMs` (a hang). */
export function rawRequest(port: number, request: RawRequest, timeoutMs = 8_000): Promise<RawAnswer> {
  const started = Date.now();
  const body = request.body === undefined ? undefined : Buffer.isBuffer(request.body) ? request.body : Buffer.from(request.body, 'utf8');
  const lines = [`${request.method} ${request.target} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: close'];
  for (const [name, value] of request.headers ?? []) lines.push(`${name}: ${value}`);
  if (body && request.contentLength !== false) lines.push(`Content-Length: ${body.length}`);
  const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');

  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ...(request.localAddress ? { localAddress: request.localAddress } : {}) });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer within ${timeoutMs} ms to ${request.method} ${request.target.slice(0, 200)}`));
    }, timeoutMs);
    socket.on('connect', () => {
      socket.write(head);
      if (body) socket.write(body);
    });
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    // The server may close while we still write (e.g. after a 413): what it answered is what counts.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      let text = Buffer.concat(chunks).toString('latin1');
      // Interim answers (100 Continue to "Expect: 100-continue") come before the real one.
      while (/^HTTP\/1\.[01] 1\d\d /.test(text) && text.includes('\r\n\r\n')) text = text.slice(text.indexOf('\r\n\r\n') + 4);
      const split = text.indexOf('\r\n\r\n');
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1];
      resolve({
        status: status === undefined ? undefined : Number(status),
        head: split === -1 ? text : text.slice(0, split),
        body: split === -1 ? '' : text.slice(split + 4),
        ms: Date.now() - started,
      });
    });
  });
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
