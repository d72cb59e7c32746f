"""The data steps of a run: generate the raw tables, and validate them.

Small functions over explicit paths and config; the CLI, the demo and the
training pipeline's components call the same steps.
"""

from __future__ import annotations

from tqdm import tqdm

from churnops.data.config import GeneratorConfig
from churnops.data.generator import save_manifest, write_raw
from churnops.data.raw import read_raw
from churnops.data.validation import ValidationRun, raw_suites, validate
from churnops.layout import Layout
from churnops.parallel.choice import LOCAL, EngineConfig
from churnops.parallel.runner import open_engine

# Raw Parquet per generated customer (about 1.3 KB at the default 420 days): what `auto` weighs before generating.
RAW_BYTES_PER_CUSTOMER = 1_300


def generate(cfg: GeneratorConfig, layout: Layout, engine: EngineConfig = LOCAL) -> dict[str, int]:
    with (
        open_engine(engine, cfg.n_customers * RAW_BYTES_PER_CUSTOMER) as runner,
        tqdm(total=cfg.n_customers, desc=f"generate customers ({runner.name} × {runner.workers})", unit="cust") as bar,
    ):
        counts = write_raw(cfg, layout.raw, progress=bar.update, engine=runner)
    save_manifest(cfg, layout.raw, counts)
    return counts


def validate_raw(layout: Layout) -> ValidationRun:
    run = ValidationRun()
    for table, expectations in tqdm(raw_suites().items(), desc="validate raw tables", unit="table"):
        run.reports.append(validate(read_raw(layout.raw, table), table, expectations))
    return run


def check(run: ValidationRun, layout: Layout, name: str) -> None:
    """Write the report, print it, and stop the run if anything failed."""
    run.write(layout.reports / f"validation_{name}.json")
    print(run.render())
    run.raise_for_failures()
