"""The drift window job for Kubeflow Pipelines v2 (and ``kfp.local``): ``churn-drift-window``.

The same job as ``churnops monitor drift``: read a window of the prediction
log (Parquet segments on one machine, PostgreSQL in the cluster), judge it
against the model version's reference profile, and publish the HTML report,
Evidently's report, the JSON report and the Prometheus text file as run
artifacts, with the verdict's figures as run metrics. A schedule (a
recurring run) makes it the cluster's periodic drift check. Runs in the
ChurnOps image like the other pipelines.
"""

from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from churnops_pipelines.training import IMAGE

PIPELINE_NAME = "churn-drift-window"


def _component(func):  # type: ignore[no-untyped-def]
    return dsl.component(base_image=IMAGE, install_kfp_package=False)(func)


@_component
def drift_window(
    tracking_uri: str,
    model_ref: str,
    window: str,
    since: str,
    until: str,
    prediction_log: str,
    prediction_log_dsn: str,
    evidently: bool,
    report: Output[HTML],
    evidently_report: Output[HTML],
    report_json: Output[Artifact],
    prometheus: Output[Artifact],
    summary: Output[Metrics],
) -> str:
    """Judge one window of the prediction log; returns the verdict (drift, no drift or no verdict)."""
    import datetime as dt
    import shutil
    import tempfile
    from pathlib import Path

    from churnops.errors import InvalidInputError
    from churnops.monitoring.profile import load_profile
    from churnops.monitoring.windows import open_store, parse_duration, parse_time, window_bounds
    from churnops.reports.window_jobs import run_drift
    from churnops.training import registry

    if not prediction_log and not prediction_log_dsn:
        raise InvalidInputError("give the prediction log: a Parquet directory or a PostgreSQL DSN", field="prediction_log")
    bounds = window_bounds(
        parse_duration(window, "window") if window else None,
        parse_time(since, "since") if since else None,
        parse_time(until, "until") if until else None,
        dt.datetime.now(dt.UTC),
    )
    reg = registry.config_for(tracking_uri)
    version = registry.resolve_version(reg, model_ref)
    profile = load_profile(reg.tracking_uri, reg.model_name, version)
    store = open_store(Path(prediction_log) if prediction_log else None, prediction_log_dsn or None, Path(prediction_log or "."))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            job = run_drift(store, profile, reg.model_name, version, bounds, Path(tmp), evidently=evidently)
        finally:
            store.close()
        shutil.copyfile(job.output.html_path, report.path)
        shutil.copyfile(job.output.json_path, report_json.path)
        shutil.copyfile(job.output.metrics_path, prometheus.path)
        if job.output.evidently_path is not None:
            shutil.copyfile(job.output.evidently_path, evidently_report.path)
        else:
            Path(evidently_report.path).write_text("<!doctype html><p>Evidently's report was not requested.</p>\n")
    r = job.result
    lineage = {"model": reg.model_name, "model_version": version, "start": bounds.start.isoformat(), "end": bounds.end.isoformat()}
    for artifact in (report, evidently_report, report_json, prometheus):
        artifact.metadata.update(lineage)
    summary.log_metric("rows", r.rows)
    summary.log_metric("features_tested", r.tested)
    summary.log_metric("features_drifted", len(r.drifted_features))
    summary.log_metric("score_psi", r.score.psi)
    if r.drifted_share is not None:
        summary.log_metric("drifted_share", r.drifted_share)
    verdict = {True: "drift", False: "no drift", None: "no verdict"}[r.drift_detected]
    for reason in r.reasons:
        print(reason)
    return verdict


@dsl.pipeline(name=PIPELINE_NAME, description="Drift of a window of the prediction log against the model version's reference profile")
def churn_drift_window(
    tracking_uri: str,
    model_ref: str = "champion",
    window: str = "24h",
    since: str = "",
    until: str = "",
    prediction_log: str = "",
    prediction_log_dsn: str = "",
    evidently: bool = True,
) -> None:
    """``window`` (90s, 30m, 24h, 7d) ends at ``until`` (default now); with ``since`` and ``until`` both set, pass ``window=""``."""
    drift_window(
        tracking_uri=tracking_uri,
        model_ref=model_ref,
        window=window,
        since=since,
        until=until,
        prediction_log=prediction_log,
        prediction_log_dsn=prediction_log_dsn,
        evidently=evidently,
    )


def compile_pipeline(path: str) -> None:
    compiler.Compiler().compile(churn_drift_window, package_path=path)
