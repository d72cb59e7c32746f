// Validates Kubernetes objects against the JSON schemas shipped by the @kubernetes-models npm packages.
// stdin: a JSON array of {package, object}; stdout: a JSON array with "ok" or the validation error for each.
import { readFileSync } from "node:fs";

const items = JSON.parse(readFileSync(0, "utf8"));
const verdicts = [];
for (const { package: pkg, object } of items) {
  const [group, version] = object.apiVersion.split("/");
  try {
    const module = await import(`${pkg}/${group}/${version}/${object.kind}`);
    const Model = module[object.kind];
    new Model(object).validate();
    verdicts.push("ok");
  } catch (error) {
    verdicts.push(`${object.kind}/${object.metadata?.name}: ${error.message}`);
  }
}
console.log(JSON.stringify(verdicts));
