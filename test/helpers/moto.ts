/** A real moto server for a test file: started once, reset between tests, stopped at the end. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

/** moto's server with its one known deviation from AWS that matters here corrected (see the file). */
const LAUNCHER = fileURLToPath(new URL('./moto_server.py', import.meta.url));

export interface Moto {
  readonly url: string;
  reset(): Promise<void>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

export async function startMoto(): Promise<Moto> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn('python3', [LAUNCHER, '-H', '127.0.0.1', '-p', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  for (let attempt = 0; ; attempt++) {
    if (child.exitCode !== null) throw new Error(`moto server exited (is moto installed for python3? pip install 'moto[server]'):\n${stderr}`);
    try {
      const answer = await fetch(`${url}/moto-api/`);
      if (answer.ok) break;
    } catch {
      // not listening yet
    }
    if (attempt > 150) throw new Error(`moto server did not start on ${url}:\n${stderr}`);
    await sleep(100);
  }

  return {
    url,
    async reset() {
      const answer = await fetch(`${url}/moto-api/reset`, { method: 'POST' });
      if (!answer.ok) throw new Error(`moto reset answered ${answer.status}`);
    },
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
}
