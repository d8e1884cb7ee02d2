// Bundles the agent into one file, dist/main.js: one file to ship in the image, fast to start.
import { build } from 'esbuild';
import { readFile, writeFile } from 'node:fs/promises';

const { version } = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));

await build({
  entryPoints: ['agent/main.ts'],
  outfile: 'dist/main.js',
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  // Minified (names kept for readable stack traces): every node parses this at start and holds it in memory.
  minify: true,
  keepNames: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  define: { AGENT_VERSION: JSON.stringify(version) },
  // The bundle is ESM but some dependencies are CommonJS and call require() for built-ins.
  banner: {
    js: "#!/usr/bin/env node\nimport { createRequire as __hlvCreateRequire } from 'node:module'; const require = __hlvCreateRequire(import.meta.url);",
  },
  logLevel: 'warning',
});

// The bundle is ESM: saying so beside it lets node load it directly wherever dist/ is copied (the image).
await writeFile(new URL('../dist/package.json', import.meta.url), '{ "type": "module" }\n');
