"""The Makefile's cluster path: recipes fail loudly, every add-on is pinned, images load into kind, and
`make deploy` creates the credentials Secret wherever a pod reads it.

Upstream behaviour designed against (read at the tags pinned in the Makefile):
- kserve/kserve v0.20.0 removed ``hack/quick_install.sh``; ``hack/setup/infra/manage.kserve-helm.sh``
  installs the ``kserve-crd`` then ``kserve-resources`` charts from ``oci://ghcr.io/kserve/charts`` with
  ``--version v0.20.0`` (the Chart.yaml versions carry the ``v``), and sets the default mode with
  ``kserve.controller.deploymentMode``.
- knative/serving knative-v1.21.1 ``config/core/configmaps/deployment.yaml``: the default
  ``registries-skipping-tag-resolving`` is ``kind.local,ko.local,dev.local``, compared with the image's
  registry host (``pkg/reconciler/revision/resolve.go``: ``tag.Registry.RegistryStr()``).
- BuildKit attaches provenance attestations by default (docker buildx build ``--provenance``), which
  ``kind load docker-image`` cannot import from the containerd image store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.render import CHART, pod_specs, rendered
from tests.support.k8s_tools import ROOT, run

MAKEFILE = ROOT / "Makefile"
VERSION = re.compile(r"^v?\d+\.\d+\.\d+$")
LITERAL_VERSION = re.compile(r"(?<![\w.])v?\d+\.\d+\.\d+(?![\w.])")
URL = re.compile(r"(?:https?|oci)://[^\s\"']+|github\.com/[^\s\"']+\?ref=[^\s\"']+")
PIPE_INTO_SHELL = re.compile(r"\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b")
# knative/serving knative-v1.21.1 config/core/configmaps/deployment.yaml, registries-skipping-tag-resolving.
KNATIVE_SKIPS_TAG_RESOLVING = {"kind.local", "ko.local", "dev.local"}


@dataclass(frozen=True)
class Makefile:
    variables: dict[str, str]
    recipes: dict[str, list[str]]

    def expand(self, text: str, depth: int = 0) -> str:
        """Expand $(VAR) references (plain variables only, as far as they are defined here)."""
        if depth > 10:
            raise AssertionError(f"recursive variable in {text!r}")
        expanded = re.sub(r"\$\(([A-Z_][A-Z0-9_]*)\)", lambda m: self.variables.get(m.group(1), m.group(0)), text)
        return expanded if expanded == text else self.expand(expanded, depth + 1)


def parse_makefile(text: str) -> Makefile:
    """Variables (``:=``, ``?=``, ``=``) and recipes (tab-indented lines, continuations joined) per target."""
    variables: dict[str, str] = {}
    recipes: dict[str, list[str]] = {}
    target: str | None = None
    lines = text.replace("\\\n", " ").splitlines()
    for line in lines:
        if line.startswith("\t") and target is not None:
            recipes[target].append(re.sub(r"\s+", " ", line.strip()))
            continue
        assignment = re.match(r"^([A-Za-z_.][A-Za-z0-9_.]*)\s*(?::=|\?=|=)\s*(.*?)\s*(?:#.*)?$", line)
        if assignment and not line.startswith(("export ", "\t")):
            variables[assignment.group(1)] = assignment.group(2)
            target = None
            continue
        rule = re.match(r"^([^\s:#=][^:#=]*?)\s*:(?!=)", line)
        if rule and not line.startswith(".PHONY"):
            target = rule.group(1).split()[0]
            recipes.setdefault(target, [])
        elif line.strip() and not line.startswith("#"):
            target = None if not line.startswith(".PHONY") else target
    return Makefile(variables, recipes)


def shell_pipes(text: str) -> list[str]:
    """Lines that pipe anything into a shell (a download run unseen, and without pipefail a failed one)."""
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if PIPE_INTO_SHELL.search(line)]


def pinned(ref: str, makefile: Makefile) -> bool:
    """A version variable whose value looks like a version, or a literal version."""
    for name in re.findall(r"\$\(([A-Z_][A-Z0-9_]*_VERSION)\)", ref):
        if VERSION.match(makefile.variables.get(name, "")):
            return True
    return bool(LITERAL_VERSION.search(ref))


def unpinned_references(makefile: Makefile) -> list[str]:
    """URLs (and remote kustomize refs) in recipes that name no version. Charts from a repository or an
    OCI registry are pinned by their ``--version``; a release file by the version in its URL."""
    problems: list[str] = []
    for target, lines in makefile.recipes.items():
        for line in lines:
            fetched = re.sub(r"echo\s+(\"[^\"]*\"|'[^']*')", "", line)  # a URL in a message fetches nothing
            for url in URL.findall(fetched):
                if url.startswith("oci://") or "--repo" in fetched:
                    version = re.search(r"--version[ =](\S+)", fetched)
                    ok = version is not None and pinned(version.group(1), makefile)
                else:
                    ok = pinned(url, makefile)
                if not ok:
                    problems.append(f"{target}: {url}")
    return problems


@pytest.fixture(scope="module")
def makefile() -> Makefile:
    return parse_makefile(MAKEFILE.read_text())


def dry_run(*args: str) -> str:
    result = run(["make", "--no-print-directory", "-n", *args], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# --- item: recipes fail loudly, every add-on pinned ---------------------------------------------------


def test_every_recipe_runs_in_bash_with_errexit_nounset_pipefail() -> None:
    text = MAKEFILE.read_text()
    assert re.search(r"^SHELL := (/bin/|/usr/bin/)?bash$", text, re.MULTILINE)
    assert re.search(r"^\.SHELLFLAGS := -euo pipefail -c$", text, re.MULTILINE)


def test_nothing_is_piped_into_a_shell() -> None:
    assert shell_pipes(MAKEFILE.read_text()) == []


def test_every_url_and_ref_is_pinned(makefile: Makefile) -> None:
    assert unpinned_references(makefile) == []


def test_the_checkers_flag_what_broke_the_cluster_path(makefile: Makefile) -> None:
    """The removed quick_install pipe, a `latest` download, an unversioned chart and a branch ref are caught."""
    broken = parse_makefile(
        "KSERVE_VERSION := v0.20.0\nBRANCH_VERSION := master\n"
        "addons:\n"
        "\tcurl -fsSL https://raw.githubusercontent.com/kserve/kserve/$(KSERVE_VERSION)/hack/quick_install.sh | bash\n"
        "\tkubectl apply -f https://github.com/cert-manager/cert-manager/releases/latest/download/cert-manager.yaml\n"
        "\thelm upgrade --install kserve oci://ghcr.io/kserve/charts/kserve-resources --namespace kserve\n"
        '\tkubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env?ref=$(BRANCH_VERSION)"\n'
        "\thelm upgrade --install kps kps --repo https://prometheus-community.github.io/helm-charts --version $(NOPE_VERSION)\n"
        '\t@echo "see https://kind.sigs.k8s.io"\n'
    )
    assert len(shell_pipes("x:\n\tcurl -fsSL https://example.org/v1.0.0/i.sh | bash\n\tcurl x |sh -s\n")) == 2
    problems = unpinned_references(broken)
    assert [p.split(": ", 1)[1].split("/")[2] for p in problems] == [
        "github.com",
        "ghcr.io",
        "pipelines",
        "prometheus-community.github.io",
    ], problems
    # the quick_install URL is pinned (a version variable), but piping it into bash is still refused
    assert not any("quick_install" in p for p in problems)


def test_addons_come_from_upstream_charts_and_release_manifests(makefile: Makefile) -> None:
    addons = "\n".join(makefile.recipes["cluster-addons"] + makefile.recipes["knative"])
    assert "quick_install" not in MAKEFILE.read_text()
    assert VERSION.match(makefile.variables["KSERVE_VERSION"]) and makefile.variables["KSERVE_VERSION"].startswith("v")
    crd = addons.index("oci://ghcr.io/kserve/charts/kserve-crd ")
    resources = addons.index("oci://ghcr.io/kserve/charts/kserve-resources ")
    assert crd < resources, "KServe's CRDs first: kserve-resources creates ClusterServingRuntimes and webhooks"
    assert "oci://docker.io/envoyproxy/gateway-helm --version $(ENVOY_GATEWAY_VERSION) --skip-crds" in addons
    assert "oci://docker.io/envoyproxy/gateway-crds-helm --version $(ENVOY_GATEWAY_VERSION)" in addons
    assert "gateway-api/releases/download/$(GATEWAY_API_VERSION)/standard-install.yaml" in addons
    assert "cert-manager/releases/download/$(CERT_MANAGER_VERSION)/" in addons
    assert "kube-prometheus-stack --repo https://prometheus-community.github.io/helm-charts" in addons
    assert "?ref=$(KFP_VERSION)" in addons


def test_kserve_standard_mode_is_the_default(makefile: Makefile) -> None:
    assert makefile.variables["KSERVE_MODE"] == "Standard"
    values = yaml.safe_load((ROOT / makefile.expand("$(ADDONS)") / "kserve-values.yaml").read_text())
    controller = values["kserve"]["controller"]
    assert controller["deploymentMode"] == "Standard"
    # the operator routes through its own HTTPRoute; a KServe Ingress with class istio would route nothing
    assert controller["gateway"]["disableIngressCreation"] is True
    knative = yaml.safe_load((ROOT / makefile.expand("$(ADDONS)") / "kserve-knative-values.yaml").read_text())
    assert knative["kserve"]["controller"]["deploymentMode"] == "Knative"
    standard = dry_run("cluster-addons")
    assert "kserve-values.yaml" in standard and "serving-core.yaml" not in standard
    serverless = dry_run("cluster-addons", "KSERVE_MODE=Knative")
    assert "kserve-knative-values.yaml" in serverless and "serving-core.yaml" in serverless


def test_kind_up_prints_every_installed_addon_with_its_version(makefile: Makefile) -> None:
    assert any("addons-table" in line for line in makefile.recipes["kind-up"])
    for mode, recipes in (("Standard", ["cluster-addons"]), ("Knative", ["cluster-addons", "knative"])):
        table = run(["make", "--no-print-directory", "addons-table", f"KSERVE_MODE={mode}"], cwd=ROOT).stdout
        used = {v for r in recipes for line in makefile.recipes[r] for v in re.findall(r"\$\(([A-Z_]+_VERSION)\)", line)}
        assert used, recipes
        for name in used:
            assert makefile.variables[name] in table, f"{mode}: {name} ({makefile.variables[name]}) missing from\n{table}"


# --- item: images kind can load and Knative does not resolve ------------------------------------------


def test_images_are_built_without_attestations_and_tagged_for_kind(makefile: Makefile) -> None:
    builds = [line for line in makefile.recipes["images"] if "docker" in line]
    assert len(builds) == 3
    for line in builds:
        assert line.startswith("docker buildx build --load "), line  # --load: into the local image store
        assert "--provenance=false" in line and "--sbom=false" in line, line
        assert "-t $(KIND_REGISTRY)/" in line, line
    loaded = next(line for line in dry_run("deploy").splitlines() if line.startswith("kind load docker-image"))
    for image in makefile.variables["IMAGES"].split():
        assert f"{makefile.variables['KIND_REGISTRY']}/{image}:{makefile.variables['VERSION']}" in loaded.split(), loaded
    assert image_registry(makefile.variables["KIND_REGISTRY"]) in KNATIVE_SKIPS_TAG_RESOLVING


def image_registry(repository: str) -> str:
    """The registry host of an image repository (Docker Hub when the first part is not a host)."""
    first = repository.split("/", 1)[0]
    return first if "/" in repository and ("." in first or ":" in first or first == "localhost") else "index.docker.io"


def test_image_registry() -> None:
    assert image_registry("kind.local/churnops/predictor") == "kind.local"
    assert image_registry("ghcr.io/churnops/predictor") == "ghcr.io"
    assert image_registry("churnops/predictor") == "index.docker.io"


def test_kind_values_images_skip_knative_tag_resolution(makefile: Makefile) -> None:
    """The kind-loaded images exist in no registry: Knative must not try to resolve their tags to digests.
    knative/serving knative-v1.21.1 config/core/configmaps/deployment.yaml lists kind.local by default."""
    kind_values = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())
    images = kind_values.get("images") or {}
    for name in makefile.variables["IMAGES"].split():
        repository = (images.get(name) or {}).get("repository", "")
        assert repository == f"{makefile.variables['KIND_REGISTRY']}/{name}", f"ci/kind-values.yaml images.{name}.repository"
        assert image_registry(repository) in KNATIVE_SKIPS_TAG_RESOLVING


# --- item: the credentials Secret wherever a pod reads it ---------------------------------------------


def references_credentials(obj: Any, secret: str) -> bool:
    return secret in json.dumps(obj)


def namespaces_needing_the_secret() -> set[str]:
    kind_values = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    secret = kind_values["credentials"]["existingSecret"]
    needed = {o["metadata"]["namespace"] for o in rendered("kind") if o["metadata"].get("namespace") and references_credentials(o, secret)}
    needed |= set(kind_values["serving"]["namespaces"])  # the predictors the operator creates there
    pipelines = {**defaults["bootstrap"]["pipelines"], **(kind_values.get("bootstrap", {}).get("pipelines") or {})}
    if pipelines.get("enabled") and pipelines.get("stepNamespace"):
        needed.add(pipelines["stepNamespace"])  # KFP steps read it with optional: false
    return needed


def test_deploy_creates_the_credentials_secret_in_every_namespace_that_reads_it() -> None:
    needed = namespaces_needing_the_secret()
    assert {"churnops-system", "churn", "kubeflow"} <= needed
    created = {ns for loop in re.findall(r"for ns in ([^;]*); do", dry_run("deploy")) for ns in loop.split()}
    assert created >= needed, f"make deploy creates churnops-credentials in {sorted(created)}, pods read it in {sorted(needed)}"


def test_recipes_survive_nounset_and_errexit() -> None:
    """`make help` (awk over the Makefile) and the dry runs of the cluster targets run under the new flags."""
    result = run(["make", "--no-print-directory", "help"], cwd=ROOT)
    assert result.returncode == 0 and "kind-up" in result.stdout, result.stderr
    for target in ("kind-up", "deploy", "demo-cluster", "images", "push", "chart-check", "lint", "test"):
        dry_run(target)


def test_parse_makefile_reads_variables_and_joined_recipes(tmp_path: Path) -> None:
    parsed = parse_makefile("A_VERSION := v1.2.3\nB ?= $(A_VERSION)/x  # note\n\nt: dep ## help\n\techo one \\\n\t  two\n")
    assert parsed.variables == {"A_VERSION": "v1.2.3", "B": "$(A_VERSION)/x"}
    assert parsed.recipes["t"] == ["echo one two"]
    assert parsed.expand("$(B)") == "v1.2.3/x"


# --- item: every image a kind pod runs is on the nodes ---------------------------------------------------


def compiled_pipeline_images() -> set[str]:
    """Every container image the compiled KFP pipelines run (deploymentSpec.executors.*.container.image)."""
    images = set()
    for path in sorted((ROOT / "pipelines" / "compiled").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for executor in ((doc or {}).get("deploymentSpec") or {}).get("executors", {}).values():
                images.add(executor["container"]["image"])
    return images


def chart_images(scenario: str) -> dict[str, str]:
    """image -> imagePullPolicy of every container the chart renders for the scenario."""
    found = {}
    for obj in rendered(scenario):
        specs = [obj["spec"]] if obj["kind"] == "ClusterServingRuntime" else pod_specs(obj)
        for spec in specs:
            for c in spec.get("initContainers", []) + spec["containers"]:
                found[c["image"]] = c.get("imagePullPolicy", "IfNotPresent")
    return found


def loaded_images(*make_args: str) -> set[str]:
    loaded = next(line for line in dry_run("deploy", *make_args).splitlines() if line.startswith("kind load docker-image"))
    return {w for w in loaded.split() if ":" in w}


@pytest.mark.parametrize(("scenario", "make_args"), [("kind", ()), ("knative", ("KSERVE_MODE=Knative",))])
def test_deploy_loads_every_image_that_no_registry_serves(makefile: Makefile, scenario: str, make_args: tuple[str, ...]) -> None:
    """ChurnOps' own images exist only where `make images` built them: every one a pod of the chart or a KFP
    step (pipelines/compiled, image churnops_pipelines.training.IMAGE) runs is loaded into the nodes, and so is
    every image pulled `Never`. Public images (Redis, PostgreSQL) are pulled from their registries."""
    ours = (makefile.expand("$(REGISTRY)") + "/", makefile.expand("$(KIND_REGISTRY)") + "/")
    needed = {i for i, policy in chart_images(scenario).items() if policy == "Never" or i.startswith(ours)}
    needed |= compiled_pipeline_images()
    assert compiled_pipeline_images() and any(i.startswith(ours[1]) for i in needed)
    missing = needed - loaded_images(*make_args)
    assert not missing, f"make deploy does not load {sorted(missing)}"


def test_images_tags_the_pipeline_image_it_loads(makefile: Makefile) -> None:
    from churnops_pipelines.training import IMAGE  # noqa: PLC0415  # the pipelines package, not the chart tests'

    assert makefile.variables["PIPELINE_IMAGE"] == IMAGE
    built = dry_run("images", "REGISTRY=registry.example/churnops")
    components = next(line for line in built.replace("\\\n", " ").splitlines() if "--target components" in line)
    assert f"-t {IMAGE}" in components, components


# --- item: the Kubeflow Pipelines backend honours what the compiled pipelines ask for --------------------

# kubeflow/pipelines 2.5.0 backend/src/v2/driver/driver.go builds secretAsEnv/configMapAsEnv key selectors
# without `Optional` (a missing optional ConfigMap or key then fails the pod with CreateContainerConfigError);
# from 2.15.0 backend/src/v2/driver/k8s.go copies it (`secretKeySelector.Optional = secretAsEnv.Optional`,
# the same for configMapAsEnv), as does 2.17.0, the release of the kfp SDK in uv.lock.
KFP_HONOURS_OPTIONAL_ENV = (2, 15, 0)


def platform_env_sources(node: Any) -> list[dict[str, Any]]:
    """Every secretAsEnv / configMapAsEnv entry in a compiled pipeline's platform spec."""
    if isinstance(node, list):
        return [e for v in node for e in platform_env_sources(v)]
    if not isinstance(node, dict):
        return []
    found = [e for key in ("secretAsEnv", "configMapAsEnv") for e in node.get(key, [])]
    return found + [e for k, v in node.items() if k not in ("secretAsEnv", "configMapAsEnv") for e in platform_env_sources(v)]


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.lstrip("v").split("."))


def test_kfp_version_keeps_optional_env_of_the_compiled_pipelines(makefile: Makefile) -> None:
    sources = [
        e
        for p in sorted((ROOT / "pipelines" / "compiled").glob("*.yaml"))
        for e in platform_env_sources(list(yaml.safe_load_all(p.read_text())))
    ]
    assert sources, "the compiled pipelines read no Secret or ConfigMap as env"
    if any(e.get("optional") for e in sources):
        assert version_tuple(makefile.variables["KFP_VERSION"]) >= KFP_HONOURS_OPTIONAL_ENV, (
            f"KFP_VERSION {makefile.variables['KFP_VERSION']} drops `optional` on secretAsEnv/configMapAsEnv"
        )


# --- item: the credentials Secret holds every key a pod reads ------------------------------------------


def secret_keys(node: Any, secret: str) -> set[str]:
    """Keys of ``secret`` that ``node`` reads: secretKeyRef, secret volumes' items, KFP's secretAsEnv."""
    if isinstance(node, list):
        return {k for v in node for k in secret_keys(v, secret)}
    if not isinstance(node, dict):
        return set()
    keys = set()
    if node.get("name") == secret and "key" in node:  # env valueFrom.secretKeyRef
        keys.add(node["key"])
    if node.get("secretName") == secret:  # a secret volume's items, KFP's secretAsEnv keyToEnv
        keys |= {i["key"] for i in node.get("items", [])} | {i["secretKey"] for i in node.get("keyToEnv", [])}
    return keys | {k for v in node.values() for k in secret_keys(v, secret)}


def kind_secret_keys(*make_args: str) -> set[str]:
    created = dry_run("kind-secrets", *make_args)
    assert "create secret generic churnops-credentials" in created
    return set(re.findall(r"--from-file=([\w.-]+)=", created))


@pytest.mark.parametrize(("scenario", "make_args"), [("kind", ()), ("knative", ("KSERVE_MODE=Knative",))])
def test_kind_secrets_create_every_key_the_deployed_values_read(scenario: str, make_args: tuple[str, ...]) -> None:
    secret = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text())["credentials"]["existingSecret"]
    read = secret_keys(list(rendered(scenario)), secret)
    read |= secret_keys([list(yaml.safe_load_all(p.read_text())) for p in (ROOT / "pipelines" / "compiled").glob("*.yaml")], secret)
    assert {"postgres-password", "jwt-secret"} <= read
    missing = read - kind_secret_keys(*make_args)
    assert not missing, f"make kind-secrets creates no {sorted(missing)} in {secret}"
    assert secret_keys({"env": [{"valueFrom": {"secretKeyRef": {"name": secret, "key": "x"}}}]}, secret) == {"x"}


def test_images_are_loaded_into_the_workers_only(makefile: Makefile) -> None:
    """kind names the nodes <cluster>-control-plane, <cluster>-worker, <cluster>-worker2 … (kubernetes-sigs/kind
    pkg/cluster/internal/providers/common/namer.go ``MakeNodeNamer``); pods never run on the tainted
    control plane of a multi-node cluster, so only the workers need the images (the runner's disk is small)."""
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    workers = sum(n["role"] == "worker" for n in config["nodes"])
    cluster = makefile.variables["KIND_CLUSTER"]
    expected = [f"{cluster}-worker{'' if i == 1 else i}" for i in range(1, workers + 1)]
    loaded = next(line for line in dry_run("deploy").splitlines() if line.startswith("kind load docker-image")).split()
    assert loaded[loaded.index("--nodes") + 1].split(",") == expected
