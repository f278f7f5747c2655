// Builds the two packages and checks what `npm pack` would publish: each tarball holds its
// README and its ESM build with type declarations, and the built entry points import under Node
// (so the emitted import paths resolve). Run by `.ci/run` through `npm run pack:check`.
//
// With `--write` (`npm run pack:tarballs`) it then packs them for real into web/dist-packages/
// (ignored by git), not into web/ itself where `npm pack` would leave them untracked: the two
// tarballs a console installs together (docs/consoles.md says how, and why both).
import { execFileSync } from "node:child_process";
import { mkdir, rm } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const npm = (...args) => execFileSync("npm", args, { cwd: web, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
const PACKAGES = ["@notify-backbone/client", "@notify-backbone/react"];

for (const name of PACKAGES) npm("run", "--silent", "build", "--workspace", name);
const packed = JSON.parse(npm("pack", "--dry-run", "--json", ...PACKAGES.flatMap((name) => ["--workspace", name])));
for (const name of PACKAGES) {
  const tarball = packed.find((entry) => entry.name === name);
  if (tarball === undefined) throw new Error(`npm pack did not pack ${name}`);
  const files = new Set(tarball.files.map((file) => file.path));
  for (const needed of ["README.md", "package.json", "dist/index.js", "dist/index.d.ts"]) {
    if (!files.has(needed)) throw new Error(`${name}'s tarball lacks ${needed}`);
  }
  if ([...files].some((path) => path.startsWith("src/"))) throw new Error(`${name}'s tarball holds src/`);
  const exported = Object.keys(await import(name));
  console.log(
    `pack-check: ${name} ${tarball.version}: ${tarball.entryCount} files, ${tarball.size} bytes; ` +
      `${exported.length} exports`,
  );
}

if (process.argv.includes("--write")) {
  const destination = join(web, "dist-packages");
  await rm(destination, { recursive: true, force: true });
  await mkdir(destination, { recursive: true });
  const written = JSON.parse(
    npm("pack", "--json", "--pack-destination", destination, ...PACKAGES.flatMap((name) => ["--workspace", name])),
  );
  for (const tarball of written) {
    console.log(`pack-check: wrote ${relative(process.cwd(), join(destination, tarball.filename))}`);
  }
}
