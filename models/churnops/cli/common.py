"""Options shared by several command groups, each with its default taken from where it is defined."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnops.errors import InvalidInputError
from churnops.layout import Layout
from churnops.training.config import BusinessConfig

if TYPE_CHECKING:
    from churnops.data.ingest import CsvDialect
    from churnops.parallel.choice import EngineConfig
    from churnops.training.registry import RegistryConfig


def add_settings_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--settings",
        type=Path,
        default=None,
        help="YAML of overrides by section (data, search, gates, economics), e.g. DVC's params.yaml; options given here win",
    )


# Each section of a settings file and the options it may set (by their argparse destination).
SETTINGS_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("customers", "seed", "history_days", "block_size"),
    "search": ("seed", "trials", "budget_minutes"),
    "gates": ("min_auc", "max_brier", "max_fairness_gap", "max_auc_regression", "per_segment_thresholds"),
    "economics": ("contact_cost", "save_rate", "months_saved", "max_contact_share"),
}


def apply_settings(args: argparse.Namespace, parser_defaults: dict[str, Any], sections: tuple[str, ...]) -> None:
    """Defaults < settings file < options given on the command line (an option left at its default yields to the file)."""
    path: Path | None = getattr(args, "settings", None)
    if path is None:
        return
    import yaml

    if not path.exists():
        raise InvalidInputError(f"{path} not found", field="--settings")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise InvalidInputError("expected a mapping of sections", field=str(path))
    for section in sections:
        values = doc.get(section) or {}
        if not isinstance(values, dict):
            raise InvalidInputError("expected a mapping", field=f"{path}:{section}")
        for key, value in values.items():
            if key not in SETTINGS_SECTIONS[section]:
                raise InvalidInputError(f"unknown setting; choose from {list(SETTINGS_SECTIONS[section])}", field=f"{path}:{section}.{key}")
            if getattr(args, key) == parser_defaults[key]:
                setattr(args, key, value)


def layout(args: argparse.Namespace) -> Layout:
    return Layout(args.data_dir)


def add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["embedded", "cluster"], default="embedded", help="feature store configuration (default embedded)")


def add_tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: embedded SQLite under --data-dir)")


def registry_config(args: argparse.Namespace) -> RegistryConfig:
    from churnops.training import registry

    if args.tracking_uri:
        return registry.config_for(args.tracking_uri)
    return registry.RegistryConfig.embedded(Path(args.data_dir))


def add_economics_args(p: argparse.ArgumentParser) -> None:
    """The retention campaign's economics (they choose the decision threshold and the business metrics)."""
    d = BusinessConfig()
    g = p.add_argument_group("campaign economics (in the revenue column's currency)")
    g.add_argument("--contact-cost", type=float, default=d.contact_cost, help=f"cost of one retention play (default {d.contact_cost:g})")
    g.add_argument("--save-rate", type=float, default=d.save_rate, help=f"share of contacted churners kept (default {d.save_rate:g})")
    g.add_argument(
        "--months-saved", type=float, default=d.months_saved, help=f"revenue months kept per saved churner (default {d.months_saved:g})"
    )
    g.add_argument(
        "--max-contact-share",
        type=float,
        default=d.max_contact_share,
        help=f"at most this share of customers contacted per campaign (default {d.max_contact_share:g})",
    )


def economics(args: argparse.Namespace) -> BusinessConfig:
    return BusinessConfig(
        contact_cost=args.contact_cost, save_rate=args.save_rate, months_saved=args.months_saved, max_contact_share=args.max_contact_share
    )


# --thousands as spelled on a command line -> the grouping mark (kept beside the option: the CLI imports no pandas)
THOUSANDS_MARKS = {".": ".", ",": ",", "space": " ", "'": "'", "none": ""}


def add_dialect_args(p: argparse.ArgumentParser) -> None:
    """How a user's CSV file is written; what is not given is detected, and each detection printed."""
    csv = p.add_argument_group("CSV dialect (detected when not given; each detection is printed and recorded in the model card)")
    csv.add_argument("--separator", default=None, help="column separator, e.g. ';' or '\\t' (default: detected by csv.Sniffer)")
    csv.add_argument("--decimal", choices=[".", ","], default=None, help="decimal mark (default: detected on every value of the file)")
    csv.add_argument(
        "--thousands",
        choices=list(THOUSANDS_MARKS),
        default=None,
        help="mark grouping thousands, e.g. '.' in 1.234,56 ('none' for no grouping; default: the other of '.' and ','). "
        "Values such as 1,000 or 1.021 that nothing else in the file decides stop ingestion until this or --decimal says which",
    )
    csv.add_argument("--encoding", default=None, help="text encoding, e.g. utf-8, latin-1, cp1252 (default: UTF-8, BOM-aware, else cp1252)")
    order = csv.add_mutually_exclusive_group()
    order.add_argument(
        "--day-first", dest="day_first", action="store_const", const=True, default=None, help="dates such as 03/04/2024 are 3 April"
    )
    order.add_argument("--month-first", dest="day_first", action="store_const", const=False, help="dates such as 03/04/2024 are 4 March")


def csv_dialect(args: argparse.Namespace) -> CsvDialect:
    from churnops.data.ingest import CsvDialect  # pandas only for the commands that read a table

    separator = "\t" if args.separator in ("\\t", "tab") else args.separator
    thousands = None if args.thousands is None else THOUSANDS_MARKS[args.thousands]
    return CsvDialect(separator, args.decimal, args.encoding, args.day_first, thousands)


# the CSV dialect options (argparse destinations), refused where no file of the user's is read
DIALECT_OPTIONS = ("separator", "decimal", "thousands", "encoding", "day_first")


def add_engine_args(p: argparse.ArgumentParser, size_decides: bool = True) -> None:
    """Where a heavy step's tasks run (churnops.parallel): this process, or Dask.

    ``size_decides=False``: under ``auto`` only a scheduler address sends the step to Dask, for a step that
    already uses every core here in bounded memory (batch scoring), where local workers only add start-up.
    """
    from churnops.parallel.choice import ADDRESS_ENV, AUTO_THRESHOLD_BYTES, KINDS

    auto = "above --engine-threshold-mb of input or with a scheduler address" if size_decides else "only with a scheduler address"
    p.add_argument(
        "--engine", choices=KINDS, default="auto", help=f"local: this process; dask: a Dask cluster; auto (default): Dask {auto}"
    )
    p.add_argument(
        "--engine-address",
        default=None,
        help=f"a running Dask scheduler, tcp://host:8786 (default ${ADDRESS_ENV}); without one, Dask starts on this machine",
    )
    p.add_argument(
        "--engine-workers", type=int, default=None, help="worker processes of a Dask cluster started here (default: one per core)"
    )
    p.add_argument(
        "--engine-threshold-mb",
        type=float,
        default=None if size_decides else float("inf"),
        help=f"input size above which auto uses Dask (default {AUTO_THRESHOLD_BYTES // 2**20 if size_decides else 'inf'})",
    )


def engine_config(args: argparse.Namespace, env: Mapping[str, str]) -> EngineConfig:
    from churnops.parallel.choice import EngineConfig

    return EngineConfig.from_options(args.engine, args.engine_address, args.engine_workers, args.engine_threshold_mb, env)
