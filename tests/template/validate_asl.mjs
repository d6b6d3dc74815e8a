// Validates a Step Functions definition offline with AWS's own Amazon States
// Language service (the engine behind the AWS Toolkit's ASL editor).
//
//   node tests/template/validate_asl.mjs statemachine/cancellation_poll.asl.json
//
// Prints {"file": ..., "diagnostics": [...]} as JSON on stdout and exits 1 when
// there is any diagnostic (schema warnings included), 2 on a usage or read
// error, 0 when the definition is clean. `${Placeholders}` for SAM's
// DefinitionSubstitutions are accepted by the service as they are.
import { readFile } from "node:fs/promises";
import asl from "amazon-states-language-service";

const { getLanguageService, TextDocument } = asl;

const SEVERITY = { 1: "error", 2: "warning", 3: "information", 4: "hint" };

async function main(argv) {
  if (argv.length !== 1) {
    process.stderr.write("usage: node validate_asl.mjs FILE.asl.json\n");
    return 2;
  }
  const file = argv[0];
  let text;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    process.stderr.write(`cannot read ${file}: ${error.message}\n`);
    return 2;
  }
  const service = getLanguageService({});
  const document = TextDocument.create(`file://${file}`, "json", 0, text);
  const jsonDocument = service.parseJSONDocument(document);
  const found = await service.doValidation(document, jsonDocument);
  const diagnostics = found.map((d) => ({
    severity: SEVERITY[d.severity] ?? String(d.severity),
    message: d.message,
    line: d.range.start.line + 1,
    column: d.range.start.character + 1,
    source: d.source ?? null,
    code: d.code ?? null,
  }));
  process.stdout.write(`${JSON.stringify({ file, diagnostics }, null, 2)}\n`);
  return diagnostics.length === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${error.stack ?? error}\n`);
    process.exit(2);
  },
);
