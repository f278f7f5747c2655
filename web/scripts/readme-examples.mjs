// Copies every ```ts and ```tsx block of the packages' READMEs into build/readme-examples/, one
// module each, so `npm run typecheck` compiles them: an example that no longer matches the API
// fails CI instead of misleading a reader.
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(web, "build", "readme-examples");
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
let written = 0;
for (const name of ["client", "react"]) {
  const readme = await readFile(join(web, "packages", name, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/^```(tsx?)\n([\s\S]*?)^```$/gm)];
  if (blocks.length === 0) throw new Error(`packages/${name}/README.md has no ts/tsx example`);
  for (const [n, block] of blocks.entries()) {
    const [, language, code] = block;
    // `export {}` makes each block a module of its own, so their names do not collide.
    await writeFile(join(out, `${name}-${n + 1}.${language}`), `${code}\nexport {};\n`);
    written += 1;
  }
}
console.log(`readme-examples: ${written} examples in build/readme-examples/`);
