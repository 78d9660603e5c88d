"""The card verbs: ``ls``, ``validate``, ``export-elevater``."""
from __future__ import annotations

from pathlib import Path

from harness.cli.common import Verb


class Ls(Verb):
    name = "ls"
    help = "list model and dataset cards"

    def add_arguments(self, parser):
        parser.add_argument("what", nargs="?", choices=("all", "models", "datasets"), default="all")

    def run(self, args):
        from harness import cards

        if args.what in ("all", "models"):
            models = cards.all_model_cards()
            print(f"{len(models)} model cards:")
            for c in models:
                pub = ", ".join(f"{k} {v:g}" for k, v in c.published.items())
                print(f"  {c.name:44s} {c.architecture:28s} {c.method:12s} {c.weights.identity}"
                      + (f"  [published: {pub}]" if pub else ""))
        if args.what in ("all", "datasets"):
            datasets = cards.all_dataset_cards()
            print(f"{len(datasets)} dataset cards:")
            for d in datasets:
                print(f"  {d.name:34s} {d.type:11s} {d.format:5s} {d.num_classes:5d} classes "
                      f"{len(d.templates):3d} templates  {d.metric:15s} test {d.eval_spec.num_images} images")
        return 0


class Validate(Verb):
    name = "validate"
    help = "check every card strictly (unknown keys, types, cross references)"

    def run(self, args):
        from harness import cards
        from harness.core import paths

        ok, errors = cards.validate_all()
        from harness.data.sources import validate_sources  # the dataset sources data (harness/data/sources.yaml)

        more_ok, more_errors = validate_sources()
        ok, errors = ok + more_ok, errors + more_errors
        models = [c for c in cards.all_model_cards() if c.architecture_config is not None]
        if paths.model_config_dirs() or models:  # the user's architectures: checked as building would (torch)
            from harness.models import user_configs

            more_ok, more_errors = user_configs.validate(models)
            ok, errors = ok + more_ok, errors + more_errors
        for line in ok:
            print(f"ok    {line}")
        for line in errors:
            print(f"ERROR {line}")
        print(f"{len(ok)} cards valid, {len(errors)} invalid")
        return 1 if errors else 0


class ExportElevater(Verb):
    name = "export-elevater"
    help = "write the ELEVATER toolkit model YAML of a model card (to run the official toolkit on the same weights)"

    def add_arguments(self, parser):
        parser.add_argument("card", help="model card name, card YAML, or toolkit model YAML")
        parser.add_argument("--out", type=Path, default=Path("elevater_models"),
                            help="folder for <card>.yaml (default ./elevater_models)")
        parser.add_argument("--weights", default=None,
                            help="weights file to name in TEST.MODEL_FILE instead of the card's")

    def run(self, args):
        from harness.models.elevater_export import export_toolkit_yaml
        from harness.models.elevater_yaml import resolve_model_card

        path = export_toolkit_yaml(resolve_model_card(args.card), args.out, weights=args.weights)
        print(f"toolkit model YAML: {path}")
        return 0


VERBS = [Ls(), Validate(), ExportElevater()]
