"""The command line's shape: flags generated from the one options object, list flags, the generated docs page, and
the Python API that runs the same evaluation."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from harness.cli import build_parser, main, verbs
from harness.cli.common import options_from_args
from harness.core.errors import HarnessError
from harness.engine.options import EvalOptions, cli_spec, make_options, option_fields

from conftest import REPO

EVAL_VERBS = ("eval", "eval-all", "rescore", "sweep")


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def _eval_args(*extra: str):
    return _parse("eval", "--model", "m", "--datasets", "d", "--data-root", "/x", *extra)


def test_the_flags_defaults_are_the_options_defaults():
    """Parsing no option flag gives exactly EvalOptions() (progress aside: off when not on a terminal)."""
    options = options_from_args(_eval_args())
    assert dataclasses.replace(options, progress=True) == EvalOptions()


def test_every_option_field_with_a_flag_is_on_every_evaluating_verb_with_its_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for verb in EVAL_VERBS:
        actions: dict[str, set] = {}
        for action in sub.choices[verb]._actions:
            actions.setdefault(action.dest, set()).add(action.help)
        for f in option_fields():
            spec = cli_spec(f)
            if spec is None:
                assert f.name not in actions, f"{f.name} is set by code, not a flag"
                continue
            assert f.name in actions, f"{verb} lacks the flag of EvalOptions.{f.name}"
            assert spec["help"] in actions[f.name]
            assert all(h and "SUPPRESS" not in h for h in actions[f.name]), "every flag is in --help"


@pytest.mark.parametrize("argv, expected", [
    (("--datasets", "a,b", "--datasets", "c"), ["a", "b", "c"]),
    (("--dataset", "a", "--dataset", "b"), ["a", "b"]),
    (("--dataset", "a, b,,", "--datasets", "c"), ["a", "b", "c"]),
])
def test_datasets_accept_repeated_and_comma_separated_values(argv, expected):
    args = _parse("eval-all", "--model", "m", "--data-root", "/x", *argv)
    assert args.datasets == expected


def test_every_flag_maps_onto_its_field():
    options = options_from_args(_eval_args(
        "--protocol", "openclip", "--numerics", "toolkit", "--precision", "amp", "--weights", "w.pt",
        "--skip-bad-images", "--device", "cpu", "--batch-size", "9", "--workers", "3", "--no-progress",
        "--no-classifier-cache", "--no-pixel-cache", "--no-feature-cache", "--refresh-cache", "--results", "/r",
        "--force", "--predictions-json"))
    assert options == EvalOptions(protocol="openclip", numerics="toolkit", precision="amp", weights="w.pt",
                                  skip_bad_images=True, device="cpu", batch_size=9, workers=3, progress=False,
                                  classifier_cache=False, pixel_cache=False, feature_cache=False, refresh_cache=True,
                                  results_root=REPO.__class__("/r"), force=True, predictions_json=True)
    assert options_from_args(_eval_args("--no-predictions-json")).predictions_json is False
    assert options_from_args(_eval_args()).predictions_json is None


def test_no_cache_turns_every_cache_off():
    options = options_from_args(_eval_args("--no-cache"))
    assert (options.classifier_cache, options.pixel_cache, options.feature_cache) == (False, False, False)


def test_bad_option_values_name_the_flag(capsys):
    with pytest.raises(HarnessError, match="--batch-size must be at least 1"):
        options_from_args(_eval_args("--batch-size", "0"))
    with pytest.raises(HarnessError, match=r"unknown evaluation option 'batchsize' \(did you mean 'batch_size'\?\)"):
        make_options(batchsize=3)


def test_docs_cli_page_is_generated_from_the_parser():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_cli_docs", REPO / "scripts" / "make_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == module.render(), "docs/cli.md is out of date: run `make cli-docs`"
    for name in verbs():
        assert f"## {name}\n" in committed


def test_python_api_returns_the_records_the_command_line_writes(demo_root, tmp_path):
    """harness.evaluate == `eval --datasets ...`: the same result files, the records in the order asked."""
    import harness

    datasets = ["oxford-iiit-pets", "cifar-10"]
    records = harness.evaluate(model="tiny_demo_clip", datasets=datasets, data_root=demo_root,
                               results_root=tmp_path / "api", workers=0, pixel_cache=False, feature_cache=False)
    assert [r["dataset"]["card"] for r in records] == datasets
    assert main(["eval", "--model", "tiny_demo_clip", "--datasets", ",".join(datasets), "--data-root",
                 str(demo_root), "--results", str(tmp_path / "cli"), "--workers", "0", "--no-progress",
                 "--no-pixel-cache", "--no-feature-cache"]) == 0
    for record in records:
        folder = tmp_path / "cli" / "tiny_demo_clip" / "elevater"
        cli = json.loads((folder / f"{record['dataset']['card']}.json").read_text())
        assert record["run_key"] == cli["run_key"] and record["score"] == cli["score"]
        api_probs = np.load(tmp_path / "api" / "tiny_demo_clip" / "elevater" / record["files"]["probs"])
        np.testing.assert_array_equal(api_probs, np.load(folder / cli["files"]["probs"]))
        assert record["provenance"]["world_size"] == 1
    # asked again: already finished, the same records come back without computing
    again = harness.evaluate(model="tiny_demo_clip", datasets=",".join(datasets), data_root=demo_root,
                             results_root=tmp_path / "api", workers=0, pixel_cache=False, feature_cache=False)
    assert [r["run_key"] for r in again] == [r["run_key"] for r in records]


def test_python_api_reports_a_missing_dataset_by_name(demo_root, tmp_path):
    import harness

    with pytest.raises(HarnessError, match="stanford-cars: missing"):
        harness.evaluate(model="tiny_demo_clip", datasets=["stanford-cars", "cifar-10"], data_root=demo_root,
                         results_root=tmp_path, workers=0)
    kept = harness.evaluate(model="tiny_demo_clip", datasets=["stanford-cars", "cifar-10"], data_root=demo_root,
                            results_root=tmp_path, workers=0, allow_failures=True)
    assert [r["dataset"]["card"] for r in kept] == ["cifar-10"]
