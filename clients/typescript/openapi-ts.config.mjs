// How genq's TypeScript client is generated: `scripts/web.sh gen` runs this
// (`npm run gen`) on the committed OpenAPI document; `scripts/web.sh check`
// fails when the committed sources differ from a fresh generation.
import { defineConfig } from '@hey-api/openapi-ts';

export default defineConfig({
  input: process.env.GENQ_OPENAPI ?? '../../api/openapi.json',
  output: {
    path: process.env.GENQ_CLIENT_OUT ?? './src',
    // No formatter: the output must depend only on the document and the pinned generator.
    postProcess: [],
  },
  plugins: [
    // The fetch client, generated into src/client (no runtime dependency);
    // `client` is exported from the entry file, to be configured.
    { name: '@hey-api/client-fetch', includeInEntry: true },
    '@hey-api/typescript',
    '@hey-api/sdk',
  ],
});
