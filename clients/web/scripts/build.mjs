// Builds the app into dist/: src/main.ts bundled by esbuild (the SDK is
// imported from ../typescript/src, so no separate SDK build is needed),
// plus the static files of public/.
import { build } from 'esbuild';
import { cp, mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await build({
  entryPoints: [join(root, 'src', 'main.ts')],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  outfile: join(dist, 'app.js'),
  sourcemap: true,
  minify: process.argv.includes('--minify'),
  logLevel: 'warning',
});
await cp(join(root, 'public'), dist, { recursive: true });
console.log(`built ${dist}`);
