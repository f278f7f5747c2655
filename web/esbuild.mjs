// Bundles the page into dist/ (index.html, app.js, app.css: nothing else, same bytes for the same
// input), with `--tests unit|node-client` the Node tests into build/*.mjs, or with `--console`
// the React test console into build/console/app.js.
import { copyFile, mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const at = (...parts) => join(here, ...parts);

// The packages' sources, not their built dist/: the page and the tests build without building
// the packages first (tsconfig.json's `paths` say the same to the typecheck).
const alias = {
  "@notify-backbone/client": at("packages", "client", "src", "index.ts"),
  "@notify-backbone/react": at("packages", "react", "src", "index.ts"),
};

const TEST_SETS = {
  unit: ["summary", "describe", "refresh", "feed", "token", "client", "react-queries", "inbox", "tabs", "react-inbox", "react-provider"],
  "node-client": ["node-client"],
};

async function buildPage() {
  const dist = at("dist");
  await rm(dist, { recursive: true, force: true });
  await mkdir(dist, { recursive: true });
  const common = {
    bundle: true,
    minify: true,
    sourcemap: false,
    legalComments: "none",
    charset: "utf8",
    logLevel: "warning",
    alias,
  };
  await esbuild.build({
    ...common,
    entryPoints: [at("src", "app.ts")],
    outfile: at("dist", "app.js"),
    format: "iife",
    platform: "browser",
    target: ["es2020", "chrome100", "firefox100", "safari15"],
  });
  await esbuild.build({
    ...common,
    entryPoints: [at("src", "app.css")],
    outfile: at("dist", "app.css"),
    target: ["chrome100", "firefox100", "safari15"],
  });
  await copyFile(at("src", "index.html"), at("dist", "index.html"));
  console.log("built dist/index.html, dist/app.js, dist/app.css");
}

async function buildTests(set) {
  const names = TEST_SETS[set];
  if (names === undefined) {
    throw new Error(`unknown test set ${JSON.stringify(set)}: one of ${Object.keys(TEST_SETS).join(", ")}`);
  }
  await mkdir(at("build"), { recursive: true });
  await esbuild.build({
    entryPoints: names.map((name) => at("test", `${name}.test.ts`)),
    outdir: at("build"),
    outExtension: { ".js": ".mjs" },
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node20",
    sourcemap: "inline",
    logLevel: "warning",
    alias,
    // CommonJS packages that require Node's own modules (react-dom/server requires `util` and
    // `stream`) need a `require` in an ESM bundle: esbuild's stand-in throws without one.
    banner: { js: 'import { createRequire } from "node:module"; const require = createRequire(import.meta.url);' },
  });
}

// The React test console (test/console/app.tsx) for tests/browser.rs, into build/console/app.js.
async function buildConsole() {
  await esbuild.build({
    entryPoints: [at("test", "console", "app.tsx")],
    outfile: at("build", "console", "app.js"),
    bundle: true,
    format: "iife",
    platform: "browser",
    target: ["chrome100"],
    jsx: "automatic",
    define: { "process.env.NODE_ENV": '"development"' },
    sourcemap: "inline",
    logLevel: "warning",
    alias,
  });
}

const args = process.argv.slice(2);
const testsAt = args.indexOf("--tests");
if (args.includes("--console")) {
  await buildConsole();
} else if (testsAt >= 0) {
  await buildTests(args[testsAt + 1]);
} else {
  await buildPage();
}
