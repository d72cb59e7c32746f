"""The predictor pod KServe and Knative build from an InferenceService, and Pod Security ``restricted``.

A small pure model of the upstream rules, read at the versions the platform installs
(KServe v0.20.0, github.com/kserve/kserve, tag v0.20.0; Knative Serving v0.48.1 = knative-v1.21,
the version that tag's go.mod requires, github.com/knative/serving):

- the predictor's pod spec: the runtime's ``kserve-container`` merged with the InferenceService's
  ``spec.predictor.model`` container fields (strategic merge, ``env`` by name, ``args`` appended),
  the runtime's pod fields (nodeSelector, affinity, tolerations, volumes, imagePullSecrets,
  schedulerName) under the predictor's own pod fields; labels and annotations: runtime, then the
  InferenceService's, then ``serving.kserve.io/inferenceservice`` and ``component``
  (kserve pkg/controller/v1beta1/inferenceservice/components/predictor.go: buildPodSpec,
  buildObjectMeta; pkg/controller/v1beta1/inferenceservice/utils/utils.go: MergeRuntimeContainers,
  MergePodSpec, MergeServingRuntimeAndInferenceServiceSpecs);
- a ``storageUri`` becomes the internal annotation ``internal.serving.kserve.io/storage-initializer-sourceuri``
  after ``ValidateStorageURI`` (utils.go: a URI without ``<scheme>://`` counts as a local path and passes,
  so ``models:/`` and ``mlflow-artifacts:/`` are accepted and fail only at download; an unknown
  ``<scheme>://`` is refused) (predictor.go: addStorageInitializerAnnotations);
- the pod webhook injects the ``storage-initializer`` init container whenever that annotation is there,
  except for ``pvc://`` (mounted) and OCI URIs (modelcar) (pkg/webhook/admission/pod/mutator.go,
  storage_initializer_injector.go: InjectStorageInitializer, CommonStorageInitialization); the
  container is built by pkg/utils/storage.go CreateInitContainerWithConfig: name, image, args,
  resources, and no securityContext;
- Knative mode: the Revision's serving container gets the single port ``user-port`` (same number)
  and a ``PORT`` env, its HTTP readiness probe moves to the queue-proxy, and the ``queue-proxy``
  sidecar is added with its own restricted securityContext (knative/serving
  pkg/reconciler/revision/resources/deploy.go: makeServingContainer, buildContainerPorts, makeContainer;
  queue.go: queueSecurityContext, makeQueueContainer; pkg/apis/serving/v1/revision_helpers.go: UserPortName).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

SOURCE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
ISVC_LABEL = "serving.kserve.io/inferenceservice"  # kserve pkg/constants/constants.go InferenceServicePodLabelKey
KSERVE_CONTAINER = "kserve-container"
STORAGE_INITIALIZER = "storage-initializer"
MODEL_MOUNT = "/mnt/models"
# kserve pkg/controller/v1beta1/inferenceservice/utils/utils.go SupportedStorageURIPrefixList (v0.20.0)
SUPPORTED_PREFIXES = (
    "gs://",
    "s3://",
    "pvc://",
    "file://",
    "https://",
    "http://",
    "hdfs://",
    "webhdfs://",
    "oci://",
    "oci+native://",
    "hf://",
)
# Fields of spec.predictor.model that are KServe's, not the container's (v1beta1 ModelSpec/PredictorExtensionSpec).
MODEL_ONLY = {"modelFormat", "runtime", "storageUri", "storage", "runtimeVersion", "protocolVersion"}
# Fields of spec.predictor that are the component's, not the pod's (v1beta1 ComponentExtensionSpec and the implementations).
COMPONENT_ONLY = {
    "model",
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "autoScaling",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
    "storageUris",
    "storageContainerName",
    "workerSpec",
}
RUNTIME_POD_FIELDS = ("nodeSelector", "affinity", "tolerations", "volumes", "imagePullSecrets", "schedulerName")
QUEUE_PROXY = {  # knative/serving queue.go v0.48.1: ports and queueSecurityContext
    "name": "queue-proxy",
    "image": "gcr.io/knative-releases/knative.dev/serving/cmd/queue",
    "ports": [
        {"name": "http-autometric", "containerPort": 9090},
        {"name": "http-usermetric", "containerPort": 9091},
        {"name": "queue-port", "containerPort": 8012},
    ],
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


class StorageURIRefusedError(Exception):
    """KServe's controller refuses the InferenceService (``StorageURI not supported``): no pod at all."""


def merge_env(base: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Strategic merge of ``env`` (patchMergeKey ``name``): same names replaced in place, new ones appended."""
    out = [dict(e) for e in base]
    for item in extra:
        at = next((i for i, e in enumerate(out) if e["name"] == item["name"]), None)
        if at is None:
            out.append(dict(item))
        else:
            out[at] = dict(item)
    return out


def merged_container(runtime: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """MergeRuntimeContainers: the InferenceService's container fields override the runtime's; args are appended."""
    own = {k: v for k, v in model.items() if k not in MODEL_ONLY and v is not None}
    merged = copy.deepcopy(dict(runtime))
    for key, value in own.items():
        if key == "env":
            merged["env"] = merge_env(merged.get("env") or [], value)
        elif key == "args":
            merged["args"] = [*(merged.get("args") or []), *value]
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def validate_storage_uri(uri: str) -> None:
    """ValidateStorageURI (without ClusterStorageContainers): local paths pass, known schemes pass, others are refused."""
    if not re.search(r"\w+?://", uri):
        return
    if "blob.core.windows.net" in uri or uri.startswith(SUPPORTED_PREFIXES):
        return
    raise StorageURIRefusedError(f"storageUri {uri!r} has no supported prefix")


def predictor_pod(isvc: Mapping[str, Any], runtime: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template KServe's controller writes for the predictor (before any webhook or Knative)."""
    meta = isvc["metadata"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    rt = runtime["spec"]
    containers = rt["containers"]
    runtime_container = next(c for c in containers if c["name"] == KSERVE_CONTAINER)
    pod_spec: dict[str, Any] = {k: copy.deepcopy(rt[k]) for k in RUNTIME_POD_FIELDS if k in rt}
    pod_spec.update({k: copy.deepcopy(v) for k, v in predictor.items() if k not in COMPONENT_ONLY and v is not None})
    pod_spec["containers"] = [merged_container(runtime_container, model)] + [
        copy.deepcopy(c) for c in containers if c["name"] != KSERVE_CONTAINER
    ]
    annotations = {**(rt.get("annotations") or {}), **(meta.get("annotations") or {}), **(predictor.get("annotations") or {})}
    uri = model.get("storageUri")
    if uri is not None:
        validate_storage_uri(uri)
        annotations[SOURCE_URI_ANNOTATION] = uri
    labels = {**(rt.get("labels") or {}), **(meta.get("labels") or {}), **(predictor.get("labels") or {})}
    labels.update({ISVC_LABEL: meta["name"], "component": "predictor"})
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def knative_revision_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What Knative's revision reconciler makes of the template: user-port, PORT, probes moved, queue-proxy added."""
    out = copy.deepcopy(dict(pod))
    spec = out["spec"]
    served = []
    for c in spec["containers"]:
        if c.get("ports") or len(spec["containers"]) == 1:
            port = int((c.get("ports") or [{"containerPort": 8080}])[0]["containerPort"])
            c["ports"] = [{"name": "user-port", "containerPort": port}]
            c["env"] = [*(c.get("env") or []), {"name": "PORT", "value": str(port)}]
        probe = c.get("readinessProbe") or {}
        if probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc"):
            c.pop("readinessProbe")  # the queue-proxy probes it
        served.append(c)
    spec["containers"] = [*served, copy.deepcopy(QUEUE_PROXY)]
    return out


def admitted_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The pod after KServe's pod webhook: the storage initializer when the source-URI annotation is there."""
    out = copy.deepcopy(dict(pod))
    uri = (out["metadata"].get("annotations") or {}).get(SOURCE_URI_ANNOTATION)
    spec = out["spec"]
    if (
        uri is None
        or uri.startswith(("oci://", "oci+native://"))
        or any(c["name"] == STORAGE_INITIALIZER for c in spec.get("initContainers", []))
    ):
        return out
    if uri.startswith("pvc://"):
        claim = uri.removeprefix("pvc://").split("/", 1)[0]
        spec.setdefault("volumes", []).append(
            {"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        return out
    initializer = {
        "name": STORAGE_INITIALIZER,
        "image": "kserve/storage-initializer:v0.20.0",
        "args": [uri, MODEL_MOUNT],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "volumeMounts": [{"name": "kserve-provision-location", "mountPath": MODEL_MOUNT}],
    }
    spec.setdefault("initContainers", []).append(initializer)
    spec.setdefault("volumes", []).append({"name": "kserve-provision-location", "emptyDir": {}})
    for c in spec["containers"]:
        if c["name"] == KSERVE_CONTAINER:
            c.setdefault("volumeMounts", []).append({"name": "kserve-provision-location", "mountPath": MODEL_MOUNT, "readOnly": True})
    return out


def pod_for(isvc: Mapping[str, Any], runtime: Mapping[str, Any]) -> dict[str, Any]:
    """The pod that reaches the API server in the InferenceService's deployment mode."""
    template = predictor_pod(isvc, runtime)
    mode = (isvc["metadata"].get("annotations") or {}).get("serving.kserve.io/deploymentMode")
    if mode in ("Knative", "Serverless"):
        template = knative_revision_pod(template)
    return admitted_pod(template)


# --- Pod Security Standards, profile "restricted" (which includes "baseline") -------------------------------
# As documented in https://kubernetes.io/docs/concepts/security/pod-security-standards/ (Kubernetes v1.35).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def restricted_violations(pod: Mapping[str, Any]) -> list[str]:
    """Every rule of the ``restricted`` profile the pod breaks, as ``<rule>: <container>``; empty when it is admitted."""
    spec = pod["spec"]
    psc = spec.get("securityContext") or {}
    found: list[str] = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(f"host namespaces: {flag}")
    for vol in spec.get("volumes") or []:
        kind = next(k for k in vol if k != "name")
        if kind not in RESTRICTED_VOLUMES:
            found.append(f"volume types: {vol['name']} is {kind}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctls: {sysctl.get('name')}")
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append("seccomp: pod Unconfined")
    pod_user = psc.get("runAsUser")
    if pod_user == 0:
        found.append("running as non-root user: pod runAsUser 0")
    for c in [*(spec.get("initContainers") or []), *spec["containers"], *(spec.get("ephemeralContainers") or [])]:
        where = c["name"]
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"privileged containers: {where}")
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if added - BASELINE_CAPABILITIES:
            found.append(f"capabilities (baseline): {where}")
        if "ALL" not in (caps.get("drop") or []) or added - {"NET_BIND_SERVICE"}:
            found.append(f"capabilities: {where} must drop ALL and add at most NET_BIND_SERVICE")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            found.append(f"host ports: {where}")
        if sc.get("procMount") not in (None, "Default"):
            found.append(f"/proc mount type: {where}")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"privilege escalation: {where} must set allowPrivilegeEscalation false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            found.append(f"running as non-root: {where} (runAsNonRoot true on the container or the pod)")
        if sc.get("runAsUser") == 0:
            found.append(f"running as non-root user: {where}")
        profile = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if profile not in ("RuntimeDefault", "Localhost"):
            found.append(f"seccomp: {where} needs RuntimeDefault or Localhost (on the container or the pod)")
    return found
