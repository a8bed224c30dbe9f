// Builds the pages into dist/ (committed; the API embeds them with
// include_bytes!): app.js (src/main.ts with the generated client, bundled
// and minified by esbuild), app.css and index.html for `/`; admin.js
// (src/admin.ts) and admin.html for the operator console at `/admin`, a
// second entry point so that neither page carries the other's code. `node build.mjs OUT`
// builds into OUT instead (scripts/web.sh check compares the two).
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, 'dist'));
mkdirSync(out, { recursive: true });

const common = {
  bundle: true,
  minify: true,
  legalComments: 'none',
  logLevel: 'warning',
  absWorkingDir: here,
};
for (const [entry, file] of [['src/main.ts', 'app.js'], ['src/admin.ts', 'admin.js']]) {
  await esbuild.build({
    ...common,
    entryPoints: [entry],
    outfile: join(out, file),
    format: 'esm',
    target: ['es2022', 'chrome109', 'firefox115', 'safari16'],
    tsconfig: 'tsconfig.json',
    charset: 'utf8',
  });
}
await esbuild.build({
  ...common,
  entryPoints: ['src/app.css'],
  outfile: join(out, 'app.css'),
  target: ['chrome109', 'firefox115', 'safari16'],
});
copyFileSync(join(here, 'src/index.html'), join(out, 'index.html'));
copyFileSync(join(here, 'src/admin.html'), join(out, 'admin.html'));
