"""The batch scoring pipeline for Kubeflow Pipelines v2 (and ``kfp.local``).

Scores a Parquet/CSV table of feature rows with a registered model (alias,
version or models:/ URI), writing scores and top-k exact SHAP reasons, then
summarises the risk bands. Runs in the ChurnOps image like the training pipeline.
"""

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from churnops_pipelines.cluster import with_store_access
from churnops_pipelines.training import IMAGE

PIPELINE_NAME = "churn-batch-scoring"


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


def compile_pipeline(path: str) -> None:
    compiler.Compiler().compile(churn_batch_scoring, package_path=path)
