"""Options shared by several command groups, each with its default taken from where it is defined."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnops.errors import InvalidInputError
from churnops.layout import Layout
from churnops.training.config import BusinessConfig

if TYPE_CHECKING:
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
    "gates": ("min_auc", "max_brier", "max_fairness_gap", "max_auc_regression"),
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
