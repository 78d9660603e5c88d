"""training.main: the REACT README's commands, locking, weights in and out, resume, bad samples, DDP on 2 CPUs."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REFERENCE_DIR, REPO

# The REACT customization README's `training.main` commands, read from the README itself (reference/react_README.md,
# a copy of the seed's) by the heading each follows: the tests below run what the README prints, not a transcription.
README_HEADINGS = {"gated": "Gated-image Locked-text tuning on 8x V100s", "locked": "Locked-text tuning on 8x V100s",
                   "eval": "Evaluating ImageNet-1K on OpenCLIP"}


def _readme_commands() -> dict[str, str]:
    """{heading: command} for every ```Shell block of the README that runs training.main."""
    text = (REFERENCE_DIR / "react_README.md").read_text(encoding="utf-8")
    commands, heading = {}, None
    for m in re.finditer(r"^#+ ([^\n]+)$|^```Shell\n(.*?)\n```$", text, re.M | re.S):
        if m.group(1) is not None:
            heading = m.group(1).strip()
        elif "-m training.main" in m.group(2):
            assert heading not in commands, f"two training.main commands under '{heading}'"
            commands[heading] = m.group(2)
    return commands


README_COMMANDS = _readme_commands()
README_GATED, README_LOCKED, README_EVAL = (README_COMMANDS.get(README_HEADINGS[k], "") for k in
                                            ("gated", "locked", "eval"))


def _tokens(command: str) -> list[str]:
    tokens = shlex.split(command.replace("\\\n", " "))
    return tokens[tokens.index("training.main") + 1:]


def _parse(command: str):
    from training.params import parse_args

    return parse_args(_tokens(command))


def test_readme_commands_parse_with_the_real_parser():
    """The README's three training.main commands (read from it, see README_HEADINGS) each parse with training.main's
    own parser, as launched in the README; the locked-text recipe differs from the gated-image one in exactly what
    the README changes (run name, lr, model, --report-to wandb, no --lock-image-unlock-gated)."""
    from training.params import parse_args

    assert sorted(README_COMMANDS) == sorted(README_HEADINGS.values())
    assert README_GATED.startswith("torchrun --nproc_per_node 8 -m training.main ")
    assert README_LOCKED.startswith("torchrun --nproc_per_node 8 -m training.main ")
    assert README_EVAL.startswith("python -m training.main ")
    parsed = {k: vars(parse_args(_tokens(README_COMMANDS[h]))) for k, h in README_HEADINGS.items()}
    for key, args in parsed.items():  # every flag the README writes is a field of the parsed args
        for flag in (t.split("=")[0] for t in _tokens(README_COMMANDS[README_HEADINGS[key]]) if t.startswith("--")):
            assert flag[2:].replace("-", "_") in args, (key, flag)
    gated, locked = parsed["gated"], parsed["locked"]
    assert {k for k in gated if gated[k] != locked[k]} == {"name", "lr", "model", "report_to",
                                                           "lock_image_unlock_gated"}
    assert (gated["lock_image_unlock_gated"], locked["report_to"]) == (True, "wandb")


def test_readme_training_commands_parse_with_every_flag():
    gated = _parse(README_GATED)
    assert gated.lock_image_unlock_gated and gated.lock_text and gated.grad_checkpointing
    assert gated.model == "react_ViT-B-32-quickgelu" and gated.resume == "./checkpoints/ViT-B-32.pt"
    assert gated.train_data == "/path/to/imagenet_10m/{00000..00897}.tar" and gated.dataset_type == "webdataset"
    assert (gated.train_num_samples, gated.warmup, gated.batch_size, gated.epochs, gated.workers) == \
        (8530639, 5000, 512, 32, 4)
    assert (gated.lr, gated.wd, gated.save_frequency, gated.zeroshot_frequency) == (5e-4, 0.1, 1, 1)
    assert gated.imagenet_val == "/path/to/imagenet/val/"
    assert gated.aug_cfg == {"use_timm": True, "scale": (0.08, 1.0), "ratio": (0.75, 1.3333333), "hflip": 0.5,
                             "interpolation": "bicubic", "color_jitter": 0.4,
                             "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "re_count": 1}
    assert gated.precision == "amp"  # OpenCLIP's default, the "p_amp" of the run name
    locked = _parse(README_LOCKED)
    assert locked.lock_text and not locked.lock_image_unlock_gated and locked.report_to == "wandb"
    assert locked.model == "ViT-B-32-quickgelu" and locked.lr == 5e-5
    ev = _parse(README_EVAL)
    assert ev.model == "react_ViT-B-32" and ev.pretrained == "react_clip_ret_laion400m" and ev.train_data is None


def test_unquoted_aug_cfg_strings_are_accepted():
    """OpenCLIP's own parser dies with a SyntaxError traceback on auto_augment=rand-m9-mstd0.5-inc1 unquoted."""
    from training.params import parse_args

    args = parse_args(["--aug-cfg", "use_timm=True", "auto_augment=rand-m9-mstd0.5-inc1", "interpolation=bicubic",
                       "scale=(0.08,1.0)", "--lr", "1e-3"])
    assert args.aug_cfg == {"use_timm": True, "auto_augment": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic",
                            "scale": (0.08, 1.0)}
    assert args.lr == 1e-3


@pytest.mark.slow
def test_make_targets_run_the_readme_recipes():
    for target, readme in (("train-gated", README_GATED), ("train-locked", README_LOCKED)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}  # `make test` runs us inside make
        out = subprocess.run(["make", "--no-print-directory", "-n", target,
                              "TRAIN_DATA=/path/to/imagenet_10m/{00000..00897}.tar",
                              "IMAGENET_VAL=/path/to/imagenet/val/", "BASE_CKPT=./checkpoints/ViT-B-32.pt"],
                             cwd=REPO, capture_output=True, text=True, check=True, env=env).stdout
        assert "--nproc_per_node 8 -m training.main" in out
        assert vars(_parse(out)) == vars(_parse(readme))


def test_timm_augmentation_takes_the_readme_keys():
    from torchvision import transforms as T

    from training.augment import timm_train_transform

    t = timm_train_transform(_parse(README_GATED).aug_cfg, (224, 224), (0.5,) * 3, (0.5,) * 3)
    text = repr(t)
    assert "RandomResizedCropAndInterpolation" in text and "scale=(0.08, 1.0)" in text
    assert "RandomHorizontalFlip(p=0.5)" in text and "RandAugment" in text and "RandomErasing" in text
    assert isinstance(t, T.Compose)


def test_readme_randaugment_never_fails_on_current_pillow():
    """'rand-m9-mstd0.5-inc1' reaches posterize(bits=0), which Pillow 11+ rejects; samples must not be lost."""
    import numpy as np
    from PIL import Image

    from training.augment import timm_train_transform

    t = timm_train_transform(_parse(README_GATED).aug_cfg, (32, 32), (0.5,) * 3, (0.5,) * 3)
    img = Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype("uint8"))
    torch.manual_seed(0)
    for _ in range(1500):
        assert t(img).shape == (3, 32, 32)


def test_unknown_aug_cfg_key_is_an_error():
    from harness.core.errors import HarnessError
    from training.augment import check_aug_cfg

    with pytest.raises(HarnessError, match=r"unknown key 'hflp'.*Did you mean 'hflip'"):
        check_aug_cfg({"use_timm": True, "hflp": 0.5})
    with pytest.raises(HarnessError, match="need use_timm=True"):
        check_aug_cfg({"hflip": 0.5})


# ----------------------------------------------------------------------------------------------------------------------
# the structure of training.main and its steps

TRAINING_STEP_MODULES = ("main", "setup", "model_setup", "evaluation", "reporting", "checkpoints", "model_card")


@pytest.mark.parametrize("module", TRAINING_STEP_MODULES)
def test_training_steps_are_short_functions_without_closures(module):
    """run() is a sequence of named steps with explicit inputs: no function over 60 lines, and no nested function or
    lambda in training/main.py (a closure there once read variables assigned after it)."""
    import ast

    tree = ast.parse((REPO / "training" / f"{module}.py").read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"training/{module}.py needs a module docstring"
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    long = {f.name: f.end_lineno - f.lineno + 1 for f in functions if f.end_lineno - f.lineno + 1 > 60}
    assert not long, long
    if module == "main":
        nested = [(f.name, inner.__class__.__name__) for f in functions for inner in ast.walk(f)
                  if inner is not f and isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
        assert not nested, nested


def test_reporter_writes_the_training_log_schema_on_rank_0_only(tmp_path):
    from harness.core import training_log as tl
    from training.reporting import Reporter

    args = type("Args", (), {"report_to": ""})()
    with Reporter.open(args, tmp_path, is_master=True) as reporter:
        reporter.log({tl.EPOCH: 1, tl.TRAIN_LOSS_MEAN: 0.5})
    with Reporter.open(args, tmp_path / "rank1", is_master=False) as other:
        other.log({tl.EPOCH: 1, tl.TRAIN_LOSS_MEAN: 0.7})
    rows = tl.read_metrics(tmp_path / tl.METRICS_FILE)
    assert len(rows) == 1 and list(rows[0]) == [tl.TIME, tl.EPOCH, tl.TRAIN_LOSS_MEAN] and tl.is_epoch_row(rows[0])
    assert not (tmp_path / "rank1").exists()


def test_latest_checkpoint_prefers_epoch_latest_then_the_highest_epoch(tmp_path):
    from training.checkpoints import LATEST_CHECKPOINT_NAME, latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for n in (2, 10, 9):
        (tmp_path / f"epoch_{n}.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch_10.pt"
    (tmp_path / LATEST_CHECKPOINT_NAME).write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / LATEST_CHECKPOINT_NAME


# ----------------------------------------------------------------------------------------------------------------------
# model preparation (in process)

def _prepare(argv: list[str]):
    from training.main import prepare_model
    from training.params import parse_args

    args = parse_args(argv)
    return args, prepare_model(args, torch.device("cpu"))


def test_gated_recipe_trains_exactly_gated_params_and_logit_scale():
    from harness.models.react import gated_parameter_names

    _, prep = _prepare(["--model", "react_tiny-ViT-32px", "--lock-image-unlock-gated", "--lock-text",
                        "--precision", "fp32"])
    trainable = [n for n, p in prep.model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(gated_parameter_names(prep.model) + ["logit_scale"])
    assert len(trainable) == 14 + 1


def test_gated_recipe_on_react_vit_b32_matches_published_gated_count():
    """react.json: react_ViT-B-32 has 42,527,244 gated parameters; they (+ logit_scale) are all that trains."""
    from training.main import prepare_model
    from training.params import parse_args

    args = parse_args(["--model", "react_ViT-B-32-quickgelu", "--lock-image-unlock-gated", "--lock-text",
                       "--precision", "fp32"])
    with torch.device("meta"):
        prep = prepare_model(args, torch.device("meta"))
    n = sum(p.numel() for p in prep.model.parameters() if p.requires_grad)
    assert n == 42527244 + 1


def test_locked_text_recipe_trains_image_tower_and_logit_scale():
    _, prep = _prepare(["--model", "tiny-ViT-32px", "--lock-text", "--precision", "fp32"])
    trainable = {n for n, p in prep.model.named_parameters() if p.requires_grad}
    visual = {f"visual.{n}" for n, _ in prep.model.visual.named_parameters()}
    assert trainable == visual | {"logit_scale"}


def test_lock_image_unlock_gated_on_plain_clip_is_a_clear_error():
    from harness.core.errors import HarnessError

    with pytest.raises(HarnessError, match="needs a REACT model"):
        _prepare(["--model", "tiny-ViT-32px", "--lock-image-unlock-gated"])


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from training.export_base import export_base

    return export_base("tiny_demo_clip", tmp_path_factory.mktemp("base") / "tiny-base.pt")


def test_bare_clip_state_dict_initialises_react_model(tiny_base, caplog, tiny_loaded):
    import logging

    caplog.set_level(logging.INFO, logger="training")
    _, prep = _prepare(["--model", "react_tiny-ViT-32px", "--resume", str(tiny_base), "--precision", "fp32"])
    assert prep.start_epoch == 0 and prep.checkpoint is None
    assert "14 gated keys keep their fresh initialisation" in caplog.text
    x = torch.randn(2, 3, 32, 32)
    prep.model.eval()  # both in eval mode: nn.MultiheadAttention's eval fast path differs in the last bits
    with torch.no_grad():
        assert torch.equal(prep.model.encode_image(x), tiny_loaded.model.encode_image(x))


def test_bare_state_dict_missing_a_non_gated_key_is_an_error(tiny_base, tmp_path):
    from harness.core.errors import HarnessError

    sd = torch.load(tiny_base)
    sd.pop("visual.ln_post.weight")
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(HarnessError, match=r"missing keys \(1\):\n    visual.ln_post.weight"):
        _prepare(["--model", "react_tiny-ViT-32px", "--resume", str(tmp_path / "broken.pt")])


# ----------------------------------------------------------------------------------------------------------------------
# end-to-end runs (subprocesses, as a user runs them)

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from harness.cards import get_dataset_card
    from harness.data.synthetic import write_img2dataset_shards

    out = tmp_path_factory.mktemp("shards")
    write_img2dataset_shards(out, get_dataset_card("cifar-10").classnames, n_shards=4, samples_per_shard=96,
                             corrupt_every=40)
    return out


def _train_cmd(shards: Path, demo_root: Path, logs: Path, name: str, *extra: str, epochs: int = 2,
               launcher: list[str] | None = None) -> list[str]:
    launcher = launcher or [sys.executable, "-m", "training.main"]
    return launcher + [
        "--train-data", f"{shards}/{{00000..00003}}.tar", "--dataset-type", "webdataset",
        "--train-num-samples", "256", "--batch-size", "32", "--epochs", str(epochs), "--lr", "2e-3", "--wd", "0.1",
        "--warmup", "4", "--workers", "2", "--precision", "fp32", "--model", "react_tiny-ViT-32px",
        "--lock-image-unlock-gated", "--lock-text", "--logs", str(logs), "--name", name, "--save-frequency", "1",
        "--zeroshot-frequency", "1", "--zeroshot-dataset", "cifar-10", "--zeroshot-data-root", str(demo_root),
        "--model-card-dir", str(logs / "cards"), "--log-every-n-steps", "1", *extra]


def _run(cmd, **kw):
    (Path(cmd[cmd.index("--logs") + 1]) / "cards").mkdir(parents=True, exist_ok=True)
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _metrics(logs: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (logs / name / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(shards, demo_root, tiny_base, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    _run(_train_cmd(shards, demo_root, logs, "gated", "--pretrained", str(tiny_base), "--report-to", "wandb",
                    epochs=3), env=env)
    return logs


@pytest.mark.slow
def test_training_run_writes_checkpoints_metrics_and_a_card(trained):
    ckpts = sorted(p.name for p in (trained / "gated" / "checkpoints").glob("*.pt"))
    assert ckpts == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    rows = _metrics(trained, "gated")
    evals = [r for r in rows if "cifar-10-zeroshot-top1" in r]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    epochs = [r for r in rows if "train_loss_mean" in r]
    assert epochs[-1]["train_loss_mean"] < epochs[0]["train_loss_mean"]
    card = (trained / "cards" / "gated.yaml").read_text()
    assert "method: gated-image" in card and "epoch_3.pt" in card


def test_bad_samples_are_skipped_and_counted(shards):
    """One pass over 4 shards x 96 samples with every 40th image corrupt: exactly the 375 good samples come out
    (each once, as img2dataset keys) and the 9 bad ones are counted."""
    from harness.models.factory import get_tokenizer
    from training.data import SkipCounter, build_pipeline, expand_urls

    skipped = SkipCounter()
    pipe = build_pipeline(expand_urls(f"{shards}/{{00000..00003}}.tar"), lambda im: im.size,
                          get_tokenizer("tiny-ViT-32px"), 1, skipped, keep_keys=True)
    keys = [batch[0][0] for batch in pipe]
    corrupt = {f"{n // 96:05d}{n % 96:04d}" for n in range(384) if (n + 1) % 40 == 0}
    assert skipped.value == 9 == len(corrupt)
    assert sorted(keys) == sorted({f"{s:05d}{i:04d}" for s in range(4) for i in range(96)} - corrupt)


@pytest.mark.slow
def test_wandb_offline_run_written_beside_the_logs(trained):
    pytest.importorskip("wandb")
    runs = list((trained / "gated" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), list((trained / "gated").rglob("*"))[:20]


@pytest.mark.slow
def test_training_logs_skipped_samples(trained):
    rows = [r["skipped_samples_total"] for r in _metrics(trained, "gated") if "skipped_samples_total" in r]
    assert len(rows) == 3 and 0 < rows[0] <= rows[1] <= rows[2] <= 3 * 9


@pytest.mark.slow
def test_checkpoint_and_card_round_trip_bit_exact(trained, demo_root, tmp_path):
    from harness.cards import load_model_card
    from harness.models import build_model
    from harness.run.runner import EvalOptions, evaluate

    ckpt = torch.load(trained / "gated" / "checkpoints" / "epoch_3.pt", weights_only=False)
    assert ckpt["epoch"] == 3 and "optimizer" in ckpt
    card = load_model_card(trained / "cards" / "gated.yaml")
    loaded = build_model(card)
    sd = loaded.model.state_dict()
    assert sorted(sd) == sorted(ckpt["state_dict"])
    assert all(torch.equal(sd[k], ckpt["state_dict"][k]) for k in sd)
    assert any(float(ckpt["state_dict"][k]) != 0 for k in sd if k.endswith("alpha_attn"))  # the gates trained
    summary = evaluate(card, ["cifar-10"], demo_root, EvalOptions(results_root=tmp_path, progress=False))
    eval_row = [r for r in _metrics(trained, "gated") if r.get("epoch") == 3 and "cifar-10-zeroshot-top1" in r][0]
    # training's eval used the openclip protocol; the same weights under it through the harness agree exactly
    oc = evaluate(card, ["cifar-10"], demo_root, EvalOptions(results_root=tmp_path, progress=False,
                                                             protocol="openclip"))
    assert oc.done["cifar-10"]["metrics"]["accuracy"] == eval_row["cifar-10-zeroshot-top1"]
    assert summary.done["cifar-10"]["n_images"] == 30


@pytest.mark.slow
def test_resume_after_interrupted_run_continues_from_saved_epoch(shards, demo_root, tiny_base, tmp_path):
    logs = tmp_path / "logs"
    (logs / "cards").mkdir(parents=True)
    cmd = _train_cmd(shards, demo_root, logs, "resume", "--pretrained", str(tiny_base), "--resume", "latest",
                     epochs=3)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = logs / "resume" / "checkpoints" / "epoch_1.pt"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not first.exists() and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done = sorted(p.name for p in first.parent.glob("epoch_*.pt"))
    assert "epoch_1.pt" in done and "epoch_3.pt" not in done, done
    saved = max(int(re.search(r"\d+", n).group()) for n in done)
    _run(cmd)
    log = (logs / "resume" / "out.log").read_text()
    assert f"resuming training checkpoint {first.parent / f'epoch_{saved}.pt'} (completed epoch {saved})" in log
    rows = [r for r in _metrics(logs, "resume") if "train_loss_mean" in r]
    after = [r["epoch"] for r in rows][-(3 - saved):]
    assert after == list(range(saved + 1, 4))  # only the unfinished epochs ran after the restart
    assert (first.parent / "epoch_3.pt").exists()


@pytest.mark.slow
def test_readme_eval_command_on_an_imagenet_folder(tiny_base, tmp_path):
    """The README's evaluation command with the model swapped for the tiny one and a 1000-synset ImageFolder."""
    from harness.data.synthetic import class_image

    val = tmp_path / "imagenet" / "val"
    for c in range(1000):
        (val / f"n{c:08d}").mkdir(parents=True)
    for c in range(0, 1000, 100):
        (val / f"n{c:08d}" / f"ILSVRC2012_val_{c:08d}.JPEG").write_bytes(class_image(c, 0, 1000))
    command = README_EVAL.replace("/path/to/imagenet/val/", str(val)).replace("--workers=16", "--workers=2") \
        .replace("react_ViT-B-32", "react_tiny-ViT-32px").replace("react_clip_ret_laion400m", str(tiny_base))
    out = _run([sys.executable, "-m", "training.main", *_tokens(command), "--logs", str(tmp_path / "logs"),
                "--name", "eval"])
    row = _metrics(tmp_path / "logs", "eval")[-1]
    assert row["eval_dataset"] == "imagenet-1k" and out.returncode == 0
    _assert_accuracies(row, "imagenet-zeroshot-val", n_images=10)


def _assert_accuracies(row: dict, prefix: str, n_images: int) -> None:
    """Top-1 and top-5 accuracy are fractions of the images evaluated: finite, 0 <= top-1 <= top-5 <= 1, and whole
    multiples of 1/n_images (a NaN, a percentage or a wrong denominator fails)."""
    import math

    top1, top5 = row[f"{prefix}-top1"], row[f"{prefix}-top5"]
    for value in (top1, top5):
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), row
        assert abs(value * n_images - round(value * n_images)) < 1e-6, (value, n_images)
    assert 0.0 <= top1 <= top5 <= 1.0, row


@pytest.mark.slow
def test_react_pretrained_tag_offline_fails_at_once(tmp_path):
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "training.main", *_tokens(README_EVAL), "--logs", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and time.time() - start < 60
    assert "clip-vit-base-32-gated-image.pt" in out.stderr and "HARNESS_WEIGHTS_REACT_VITB32_CLIP" in out.stderr
    # the advice is what works in training.main: --weights is python -m harness's flag, not ours
    assert "--weights" not in out.stderr and "HARNESS_WEIGHTS_DIR" in out.stderr
    assert "--pretrained /path/to/clip-vit-base-32-gated-image.pt" in out.stderr


@pytest.mark.slow
def test_openclip_tag_on_a_react_model_names_the_base_weights_offline(tmp_path):
    """--pretrained openai on react_ViT-B-32: OpenCLIP's tag of the base architecture (gates stay fresh); offline
    and uncached it fails at once with training.main's advice."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))  # an empty Hugging Face cache
    out = subprocess.run([sys.executable, "-m", "training.main", "--model", "react_ViT-B-32", "--pretrained", "openai",
                          "--imagenet-val", str(tmp_path), "--logs", str(tmp_path / "logs")],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "open_clip tag ViT-B-32/openai" in out.stderr and "HARNESS_WEIGHTS_VIT_B_32_OPENAI" in out.stderr
    assert "--weights" not in out.stderr and "--pretrained /path/to/" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["--model", "no-such-model"],  # fails before logging is set up
    ["--model", "tiny-ViT-32px", "--lock-image-unlock-gated"],  # fails after (out.log written)
], ids=["early", "after-logging-setup"])
def test_failed_run_ends_without_torchdynamo_logs(argv, tmp_path):
    """open_clip_train's setup_logging sets every logger to INFO, which made TorchDynamo print its exit summary
    ("I1128 ... torch/_dynamo/utils.py] TorchDynamo compilation metrics") after every run; only --debug shows it."""
    out = subprocess.run([sys.executable, "-m", "training.main", *argv, "--logs", str(tmp_path), "--name", "x"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "error: " in out.stderr
    assert "_dynamo" not in out.stderr + out.stdout, out.stderr[-3000:]
    assert "_subclasses" not in out.stderr + out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_export_base_offline_fails_clearly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "training.export_base", "--card", "vitb32_CLIP", "--out",
                          str(tmp_path / "ViT-B-32.pt")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "HF_HUB_OFFLINE is set" in out.stderr and "--weights" in out.stderr
    assert not (tmp_path / "ViT-B-32.pt").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(shards, demo_root, tiny_base, tmp_path):
    """torchrun, 2 processes, gloo: ranks read disjoint samples, end with identical parameters, loss falls."""
    logs = tmp_path / "logs"
    launcher = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m", "training.main"]
    cmd = _train_cmd(shards, demo_root, logs, "ddp", "--pretrained", str(tiny_base), "--debug-rank-stats",
                     epochs=4, launcher=launcher)
    cmd[cmd.index("--batch-size") + 1] = "16"
    cmd[cmd.index("--workers") + 1] = "1"
    # torchrun's argparse would take OpenCLIP's --logs as an ambiguous prefix of its --logs-specs: run in a folder
    # instead and let --logs default to ./logs there.
    i = cmd.index("--logs")
    del cmd[i:i + 2]
    (logs / "cards").mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    stats = [json.loads((logs / "ddp" / f"rank{r}_stats.json").read_text()) for r in (0, 1)]
    assert [s["world_size"] for s in stats] == [2, 2]
    assert sorted(stats[0]["keys_by_epoch"]) == ["0", "1", "2", "3"]
    for epoch, keys in stats[0]["keys_by_epoch"].items():  # every epoch, the ranks read disjoint shards
        keys0, keys1 = set(keys), set(stats[1]["keys_by_epoch"][epoch])
        assert len(keys0) == len(keys1) == 128
        assert {k[:5] for k in keys0}.isdisjoint({k[:5] for k in keys1})
    assert stats[0]["param_checksum"] == stats[1]["param_checksum"]  # gradients were averaged identically
    losses = stats[0]["losses"]
    n = len(losses) // 4
    assert sum(losses[-n:]) / n < sum(losses[:n]) / n


@pytest.mark.slow
def test_make_train_tiny_trains_writes_a_card_and_evaluates_it(tmp_path):
    """The Makefile's tiny variant end to end (2 epochs to keep the suite short; the demo runs 8)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    out = subprocess.run(["make", "--no-print-directory", "train-tiny", f"DEMO_DIR={tmp_path}", "TINY_EPOCHS=2"],
                         cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    card = tmp_path / "model_cards" / "tiny_gated_image.yaml"
    assert "method: gated-image" in card.read_text() and "base_model: tiny_demo_clip" in card.read_text()
    results = tmp_path / "results" / "tiny_gated_image" / "elevater"
    assert sorted(p.name for p in results.glob("*.json") if not p.name.endswith("predictions.json")) == \
        sorted(f"{d}.json" for d in ("cifar-10", "hateful-memes", "imagenet-1k", "kitti-distance",
                                     "oxford-iiit-pets", "voc-2007-classification"))
    from harness.cards import dataset_card_names

    assert "6 evaluated" in out.stdout and f"{len(dataset_card_names()) - 6} missing" in out.stdout
