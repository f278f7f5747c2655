// Copies every ```ts and ```tsx block of the packages' READMEs, of the repository's README.md
// and of its guides (docs/*.md) into build/readme-examples/, one module each, so
// `npm run typecheck` compiles them: an example that no longer matches the API fails CI instead
// of misleading a reader. A block that is not this project's code (the Socket.IO hooks a guide
// shows being replaced) is left out only when the line before it says so, with a reason:
// `<!-- not checked: … -->`; the count of those is printed, so none goes unnoticed.
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(web, "..");
const out = join(web, "build", "readme-examples");
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });

const guides = (await readdir(join(repo, "docs"))).filter((name) => name.endsWith(".md")).sort();
// [file relative to the repository, name of its examples, whether it must have one]
const sources = [
  ["web/packages/client/README.md", "client", true],
  ["web/packages/react/README.md", "react", true],
  ["README.md", "README", false],
  ...guides.map((name) => [`docs/${name}`, `docs-${name.replace(/\.md$/, "")}`, false]),
];

let written = 0;
const skipped = [];
for (const [file, name, required] of sources) {
  const text = await readFile(join(repo, file), "utf8");
  const blocks = [...text.matchAll(/^```(tsx?)\n([\s\S]*?)^```$/gm)];
  if (required && blocks.length === 0) throw new Error(`${file} has no ts/tsx example`);
  for (const [n, block] of blocks.entries()) {
    const [, language, code] = block;
    const before = text.slice(0, block.index).trimEnd().split("\n").at(-1) ?? "";
    const reason = /^<!-- not checked: (.+) -->$/.exec(before);
    if (reason) {
      const line = text.slice(0, block.index).split("\n").length;
      skipped.push(`${file}:${line} (${reason[1]})`);
      continue;
    }
    // `export {}` makes each block a module of its own, so their names do not collide.
    await writeFile(join(out, `${name}-${n + 1}.${language}`), `${code}\nexport {};\n`);
    written += 1;
  }
}
console.log(
  `readme-examples: ${written} examples in build/readme-examples/` +
    (skipped.length ? `; not checked, as marked: ${skipped.join(", ")}` : ""),
);
