// Bundles the agent into dist/: the entry dist/main.js, plus one chunk per dynamically imported part
// (dist/chunks/), so that what the agent loads only when it needs it (the EC2 client, the largest module)
// costs no memory until then. OUTDIR=<dir> builds elsewhere (benchmarks and tests of the build itself,
// which must not touch the dist/ other tests run).
import { build } from 'esbuild';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const { version } = JSON.parse(await readFile(join(root, 'package.json'), 'utf8'));
const outdir = resolve(root, process.env.OUTDIR ?? 'dist');

/**
 * `node:http` through require(), never through an ES import: on Node 22, an ES import of node:http builds
 * its ESM facade by reading every export, and its lazy `WebSocket`, `MessageEvent` and `CloseEvent` load
 * Node's own undici, whose WebAssembly HTTP parser is then compiled for nothing: 9 MiB of resident memory
 * (measured: `import 'node:http'` 56 MiB, `require('node:http')` 47 MiB). The AWS SDK's HTTP handler and
 * the agent's own server and requests all import it; this rewrites every such import.
 */
const httpByRequire = {
  name: 'http-by-require',
  setup(build) {
    // The wrapper's own require() is the built-in itself.
    build.onResolve({ filter: /^(node:)?http$/ }, (args) =>
      args.namespace === 'http-by-require' ? { path: 'node:http', external: true } : { path: 'node:http', namespace: 'http-by-require' },
    );
    build.onLoad({ filter: /.*/, namespace: 'http-by-require' }, () => ({ contents: "module.exports = require('node:http');", loader: 'js' }));
  },
};

/**
 * The AWS SDK describes every shape of a service in one module (`schemas/schemas_0.js`), as arrays whose
 * member traits have computed keys (`{ [_xN]: "Min" }`, `_xN` a string constant of that module). A
 * computed key could run code, so the bundler keeps every shape, used or not: the EC2 chunk carried all
 * of EC2's shapes (558 KiB, about 1 MiB of heap once loaded). Written as the literal each constant holds
 * (`{ ["xmlName"]: "Min" }`, the same object), the keys are plainly pure, and only the shapes the agent's
 * few commands reach are bundled.
 */
const sdkSchemasPure = {
  name: 'sdk-schemas-pure',
  setup(build) {
    build.onLoad({ filter: /[\\/]@aws-sdk[\\/]client-[^\\/]+[\\/]dist-es[\\/]schemas[\\/]schemas_0\.js$/ }, async (args) => {
      const source = await readFile(args.path, 'utf8');
      const strings = new Map();
      for (const [, name, value] of source.matchAll(/^const ([A-Za-z_$][\w$]*) = ("[^"\\\n]*");$/gm)) strings.set(name, value);
      const contents = source.replace(/\{\s*\[([A-Za-z_$][\w$]*)\]:|,\s*\[([A-Za-z_$][\w$]*)\]:/g, (key, first, next) => {
        const value = strings.get(first ?? next);
        return value === undefined ? key : key.replace(/\[[^\]]+\]/, `[${value}]`);
      });
      return { contents, loader: 'js' };
    });
  },
};

/**
 * prom-client's index loads all of it: Summary (with its t-digest), Pushgateway (http, https, url), the
 * cluster aggregator (node:cluster) and more, which the agent never uses. Its parts are modules of their
 * own (`lib/`): `prom-client` resolves here to the ones agent/metrics.ts imports (about 1 MiB less
 * resident memory for a coordinator on Node 22, 0.5 MiB for a follower, measured). An import missing
 * here fails the build, never the agent.
 */
const promClientParts = {
  name: 'prom-client-parts',
  setup(build) {
    build.onResolve({ filter: /^prom-client$/ }, () => ({ path: 'prom-client', namespace: 'prom-client-parts' }));
    build.onLoad({ filter: /.*/, namespace: 'prom-client-parts' }, () => ({
      contents: [
        "export { default as Registry } from 'prom-client/lib/registry';",
        "export { default as Counter } from 'prom-client/lib/counter';",
        "export { default as Gauge } from 'prom-client/lib/gauge';",
        "export { default as Histogram } from 'prom-client/lib/histogram';",
        "export { default as collectDefaultMetrics } from 'prom-client/lib/defaultMetrics';",
      ].join('\n'),
      resolveDir: root,
      loader: 'js',
    }));
  },
};

const { metafile } = await build({
  entryPoints: { main: 'agent/main.ts' },
  outdir,
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  platform: 'node',
  // The ES module build of each package first (esbuild's default on node is the CommonJS one): the AWS SDK
  // ships both, and only the ES one lets the bundler drop the commands and schemas the agent never uses.
  mainFields: ['module', 'main'],
  target: 'node20',
  format: 'esm',
  // Minified (names kept for readable stack traces): every node parses this at start and holds it in memory.
  minify: true,
  keepNames: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  define: { AGENT_VERSION: JSON.stringify(version) },
  // The bundle is ESM but some dependencies are CommonJS and call require() for built-ins. esbuild puts
  // the banner at the top of every output file, chunks included, so each has its own require.
  banner: {
    js: "#!/usr/bin/env node\nimport { createRequire as __hlvCreateRequire } from 'node:module'; const require = __hlvCreateRequire(import.meta.url);",
  },
  logLevel: 'warning',
  metafile: true,
  plugins: [httpByRequire, sdkSchemasPure, promClientParts],
});

// Chunk names carry a content hash, so an older build's chunks are never loaded, but they would ship in
// the image: remove them. (After the build, not before: tests may be running the dist/ being replaced.)
const written = new Set(Object.keys(metafile.outputs).map((path) => resolve(root, path)));
const chunks = join(outdir, 'chunks');
for (const name of await readdir(chunks)) {
  if (!written.has(join(chunks, name))) await rm(join(chunks, name));
}

// The bundle is ESM: saying so beside it lets node load it directly wherever dist/ is copied (the image).
await writeFile(resolve(outdir, 'package.json'), '{ "type": "module" }\n');
