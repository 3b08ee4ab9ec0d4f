// Validates Gateway API routes against the API's v1 schemas, as the package
// @kubernetes-models/gateway-api compiles them from the API's own types (the types the CRDs
// are generated from): field types, enums, patterns, lengths, required fields.
//
// usage: node validate_gateway_api.mjs NODE_MODULES ROUTES.json
// ROUTES.json is a list of {source, expect: "valid" | "invalid", object}. Prints one line per
// route refused (why) and per route whose result is not the one expected, and a summary;
// exits 1 if any result was not the one expected.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, list] = process.argv.slice(2);
const base = join(modules, "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1");
const load = async (kind) => (await import(pathToFileURL(join(base, `${kind}.js`)).href))[kind];
const models = { HTTPRoute: await load("HTTPRoute"), GRPCRoute: await load("GRPCRoute") };

let failed = 0;
const counts = { valid: 0, invalid: 0 };
for (const { source, expect, object } of JSON.parse(readFileSync(list, "utf8"))) {
  const Model = models[object.kind];
  if (!Model) {
    console.log(`${source}: not a route of the API's v1: ${object.apiVersion} ${object.kind}`);
    failed++;
    continue;
  }
  let error = null;
  try {
    new Model(object).validate();
  } catch (e) {
    error = e.message;
  }
  const got = error === null ? "valid" : "invalid";
  counts[got]++;
  if (error !== null && expect === "invalid") {
    console.log(`${source}: refused: ${error}`);
  }
  if (got !== expect) {
    console.log(`${source}: ${object.kind} ${object.metadata?.name}: expected ${expect}, ${got}${error ? `: ${error}` : ""}`);
    failed++;
  }
}
console.log(`${counts.valid} valid, ${counts.invalid} invalid`);
process.exit(failed ? 1 : 0);
