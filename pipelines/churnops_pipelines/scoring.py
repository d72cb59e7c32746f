"""The batch scoring pipelines for Kubeflow Pipelines v2 (and ``kfp.local``).

``churn-batch-scoring`` scores a Parquet/CSV table of feature rows with a registered model (alias,
version or models:/ URI) in the step's own process, writing scores and top-k exact SHAP reasons, then
summarises the risk bands. ``churn-batch-scoring-engine`` does the same for tables that outgrow a pod:
the input's partitions are tasks on the release's Dask cluster (the chart's ``engine``; the step finds
its scheduler in ``DASK_SCHEDULER_ADDRESS``), reading and writing on the claim shared with the workers.
Both run in the ChurnOps image like the training pipeline.
"""

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Dataset, Input, Metrics, Output

from churnops_pipelines.cluster import with_store_access
from churnops_pipelines.training import IMAGE

PIPELINE_NAME = "churn-batch-scoring"
ENGINE_PIPELINE_NAME = "churn-batch-scoring-engine"
SHARED_MOUNT = "/data"  # where the chart mounts engine.sharedVolume in the workers (engine.sharedVolume.mountPath)


def _component(func):  # type: ignore[no-untyped-def]
    return dsl.component(base_image=IMAGE, install_kfp_package=False)(func)


@_component
def batch_score(input_path: str, tracking_uri: str, model_ref: str, top_k: int, chunk_rows: int, scores: Output[Dataset]) -> str:
    """Stream the input through the model in chunks; returns the model version used."""
    import hashlib
    import os
    from pathlib import Path

    from churnops.serving.batch import score_file
    from churnops.serving.explain import CompiledModel
    from churnops.training import registry

    reg = registry.RegistryConfig(tracking_uri=tracking_uri)
    version = registry.resolve_version(reg, model_ref)
    model = CompiledModel(registry.load_model(reg, version), threads=os.cpu_count() or 1)  # verifies the sha256
    threshold = registry.version_info(reg, version)["threshold"]
    out = Path(scores.path)
    report = score_file(model, threshold, Path(input_path), out, chunk_rows=chunk_rows, top_k=top_k)
    scores.metadata.update(
        {
            "rows": report.rows,
            "model": reg.model_name,
            "model_version": version,
            "reasons": report.explained,
            "rows_per_minute": round(report.rows_per_minute),
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "input": input_path,
        }
    )
    return version


@_component
def summarize_scores(scores: Input[Dataset], summary: Output[Metrics]) -> None:
    """Risk-band counts and the score distribution, for the run page."""

    from churnops.data.parquet import read_parquet

    frame = read_parquet(scores.path, columns=["churn_probability", "risk_band"])
    summary.log_metric("rows", len(frame))
    summary.log_metric("mean_churn_probability", float(frame["churn_probability"].mean()))
    for band in ("low", "medium", "high"):
        summary.log_metric(f"band_{band}", int((frame["risk_band"] == band).sum()))


@dsl.pipeline(name=PIPELINE_NAME, description="Score a table of customers with a registered churn model, with exact SHAP reasons")
def churn_batch_scoring(
    input_path: str,
    tracking_uri: str,
    model_ref: str = "champion",
    top_k: int = 5,
    chunk_rows: int = 50_000,
) -> None:
    scored = batch_score(input_path=input_path, tracking_uri=tracking_uri, model_ref=model_ref, top_k=top_k, chunk_rows=chunk_rows)
    with_store_access(scored)
    summarize_scores(scores=scored.outputs["scores"])


@_component
def batch_score_partitions(
    input_path: str,
    output_dir: str,
    tracking_uri: str,
    model_ref: str,
    top_k: int,
    chunk_rows: int,
    partition_rows: int,
    scores: Output[Dataset],
) -> str:
    """The input's partitions as engine tasks into ``output_dir`` (``part-NNNNN.parquet``); returns the model version.

    The engine is the scheduler in DASK_SCHEDULER_ADDRESS; without one (``kfp.local``), this process.
    """
    import json
    import os
    import uuid
    from pathlib import Path

    from churnops.parallel.choice import EngineConfig
    from churnops.parallel.runner import open_engine
    from churnops.serving.batch_partitions import PartitionJob, plan_partitions, score_partitions
    from churnops.training import registry

    reg = registry.RegistryConfig(tracking_uri=tracking_uri)
    version = registry.resolve_version(reg, model_ref)
    ensemble = registry.load_model(reg, version)  # verifies the sha256
    threshold = registry.version_info(reg, version)["threshold"]
    parts = plan_partitions(Path(input_path), partition_rows)
    with open_engine(EngineConfig.from_options("auto", None, None, None, os.environ), 0) as engine:
        threads = 1 if engine.name == "dask" else os.cpu_count() or 1
        job = PartitionJob(f"kfp-{uuid.uuid4().hex[:12]}", reg.model_name, version, threshold, Path(output_dir), top_k, chunk_rows, threads)
        results = score_partitions(engine, ensemble, parts, job)
    manifest = [{"output": str(r.output), "sha256": r.output_sha256, "rows": r.rows, "input": str(r.partition.src)} for r in results]
    Path(scores.path).write_text(json.dumps(manifest, indent=2) + "\n")  # the artifact: which partitions, and their digests
    scores.metadata.update(
        {
            "rows": sum(r.rows for r in results),
            "partitions": len(results),
            "output_dir": output_dir,
            "engine": engine.name,
            "model": reg.model_name,
            "model_version": version,
            "reasons": all(r.explained for r in results),
            "input": input_path,
        }
    )
    return version


@_component
def summarize_partitions(scores: Input[Dataset], summary: Output[Metrics]) -> None:
    """Risk-band counts and the mean score over every partition, for the run page."""
    import json

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows, total = 0, 0.0
    bands = {"low": 0, "medium": 0, "high": 0}
    with open(scores.path) as f:
        manifest = json.load(f)
    for part in manifest:
        table = pq.ParquetFile(part["output"]).read(columns=["churn_probability", "risk_band"])
        rows += table.num_rows
        total += pc.sum(table["churn_probability"]).as_py() or 0.0
        for band, count in zip(*pc.value_counts(table["risk_band"]).flatten(), strict=True):
            bands[band.as_py()] += count.as_py()
    summary.log_metric("rows", rows)
    summary.log_metric("mean_churn_probability", total / rows if rows else 0.0)
    for band, count in bands.items():
        summary.log_metric(f"band_{band}", count)


@dsl.pipeline(
    name=ENGINE_PIPELINE_NAME,
    description="Score a partitioned table with a registered churn model on the Dask engine, with exact SHAP reasons",
)
def churn_batch_scoring_engine(
    input_path: str,
    output_dir: str,
    tracking_uri: str,
    shared_claim: str,
    model_ref: str = "champion",
    top_k: int = 5,
    chunk_rows: int = 50_000,
    partition_rows: int = 500_000,
) -> None:
    """``input_path`` and ``output_dir`` lie under /data, the ``shared_claim`` the workers mount there too."""
    scored = batch_score_partitions(
        input_path=input_path,
        output_dir=output_dir,
        tracking_uri=tracking_uri,
        model_ref=model_ref,
        top_k=top_k,
        chunk_rows=chunk_rows,
        partition_rows=partition_rows,
    )
    with_store_access(scored)
    kubernetes.mount_pvc(scored, pvc_name=shared_claim, mount_path=SHARED_MOUNT)
    summarized = summarize_partitions(scores=scored.outputs["scores"])
    kubernetes.mount_pvc(summarized, pvc_name=shared_claim, mount_path=SHARED_MOUNT)


def compile_pipeline(path: str) -> None:
    compiler.Compiler().compile(churn_batch_scoring, package_path=path)


def compile_engine_pipeline(path: str) -> None:
    compiler.Compiler().compile(churn_batch_scoring_engine, package_path=path)
