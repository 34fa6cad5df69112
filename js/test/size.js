// Prints the client's size, minified by esbuild and gzipped: `npm run size`.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

export const BUDGET = 4096; // bytes, minified and gzipped

export async function measure() {
  const out = await build({
    entryPoints: [fileURLToPath(new URL("../src/index.js", import.meta.url))],
    bundle: true,
    minify: true,
    format: "esm",
    write: false,
  });
  const code = out.outputFiles[0].contents;
  return { minified: code.length, gzipped: gzipSync(code).length };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { minified, gzipped } = await measure();
  console.log(`${minified} bytes minified, ${gzipped} bytes minified and gzipped (budget ${BUDGET})`);
}
