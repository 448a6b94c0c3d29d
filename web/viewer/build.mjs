// Rebuild ../../backend/facesplat/core/web/viewer.min.js and its licence file:
//   cd web/viewer && npm ci && npm run build
// The output is committed, so installing or testing FaceSplat needs no npm.
import { build } from 'esbuild';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';

const out = new URL('../../backend/facesplat/core/web/', import.meta.url);
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ['viewer.js'],
  bundle: true,
  minify: true,
  format: 'iife',
  target: 'es2020',
  legalComments: 'none', // the licences go into LICENSES.txt beside the bundle, in full
  outfile: new URL('viewer.min.js', out).pathname,
  logLevel: 'info',
});

const pkg = (name) => JSON.parse(readFileSync(`node_modules/${name}/package.json`, 'utf8'));
const licence = (name) => readFileSync(`node_modules/${name}/LICENSE`, 'utf8').trim();
const parts = ['@mkkellogg/gaussian-splats-3d', 'three'].map((name) =>
  `${name} ${pkg(name).version} (${pkg(name).license}), bundled into viewer.min.js by esbuild ` +
  `${pkg('esbuild').version}\n${'-'.repeat(72)}\n${licence(name)}\n`);
writeFileSync(new URL('LICENSES.txt', out),
  'Third-party code in viewer.min.js (built by web/viewer/build.mjs)\n\n' + parts.join('\n'));
