"""Weights: where a card's file is (resolution), what it holds (reading), and strict loading into a model.

Weights are looked up in this order (the first that applies wins):
1. an explicit path (``--weights PATH`` on the command line);
2. the environment variable ``HARNESS_WEIGHTS_<CARD>`` (card name upper-cased, non-alphanumerics as ``_``);
3. a file in ``HARNESS_WEIGHTS_DIR`` named like the card's ``weights.file`` or ``<card name>.pt``;
4. the card's own source: a local path, an open_clip pretrained tag or a Hugging Face Hub file (local HF cache first,
   then a download when the hub is reachable).
Offline, a file that is not on disk fails at once with where it looked and how to point the card at a local copy.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

from harness.cards import ModelCard
from harness.core.network import hub_endpoint, hub_reachable, offline_mode
from harness.core.errors import HarnessError

logger = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------------------------------
# weights resolution

def weights_env_var(card_name: str) -> str:
    """The environment variable that names a local copy of a card's weights: HARNESS_WEIGHTS_<CARD>."""
    return "HARNESS_WEIGHTS_" + re.sub(r"[^0-9A-Za-z]", "_", card_name).upper()


def _offline_error(card: ModelCard, what: str, looked: list[str]) -> HarnessError:
    file_name = card.weights.file or f"{card.name}.pt"
    return HarnessError(
        f"Weights for model card '{card.name}' ({what}) are not on this machine and "
        f"{'HF_HUB_OFFLINE is set' if offline_mode() else hub_endpoint() + ' cannot be reached'}.\n"
        f"Looked in: " + "; ".join(looked) + "\n"
        f"To use a local copy: pass --weights /path/to/file, or set {weights_env_var(card.name)}=/path/to/file, or put "
        f"the file in a folder named by HARNESS_WEIGHTS_DIR as '{file_name}'.")


def _hf_cached(repo: str, filename: str) -> str | None:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename, local_files_only=True)
    except Exception:  # not in the local cache (the hub library raises several types for that)
        return None


def resolve_weights(card: ModelCard, override: str | os.PathLike | None = None) -> Path | None:
    """The local file holding the card's weights (downloading it if needed and possible); None for random init."""
    looked: list[str] = []
    candidates: list[tuple[str, str | None]] = [
        ("--weights", str(override) if override else None),
        (weights_env_var(card.name), os.environ.get(weights_env_var(card.name))),
    ]
    for label, value in candidates:
        if value:
            p = Path(value).expanduser()
            if not p.is_file():
                raise HarnessError(f"Weights file {p} (from {label}) for model card '{card.name}' does not exist.")
            return p
    weights_dir = os.environ.get("HARNESS_WEIGHTS_DIR")
    if weights_dir:
        for name in filter(None, (card.weights.file, f"{card.name}.pt")):
            p = Path(weights_dir).expanduser() / name
            looked.append(str(p))
            if p.is_file():
                return p
    w = card.weights
    if w.source == "random":
        return None
    if w.source == "local":
        p = Path(w.path).expanduser()
        if not p.is_absolute():  # relative to the card's own folder (cards built in memory: the current directory)
            p = (card.path.parent if card.path else Path.cwd()) / p
        if not p.is_file():
            raise HarnessError(f"Model card '{card.name}' points at local weights {p}, which do not exist. "
                               f"Create them (see the README) or pass --weights /path/to/file.")
        return p
    if w.source == "hf-hub":
        looked.append(f"Hugging Face cache ({w.repo}/{w.file})")
        cached = _hf_cached(w.repo, w.file)
        if cached:
            return Path(cached)
        if not hub_reachable():
            raise _offline_error(card, f"hf-hub {w.repo}/{w.file}", looked)
        from huggingface_hub import hf_hub_download

        logger.info("downloading %s/%s from the Hugging Face Hub", w.repo, w.file)
        try:
            return Path(hf_hub_download(w.repo, w.file))
        except Exception as exc:
            raise HarnessError(f"Could not download {w.repo}/{w.file} for model card '{card.name}': {exc}") from exc
    # an open_clip pretrained tag
    import open_clip

    base_arch = card.architecture
    pcfg = open_clip.get_pretrained_cfg(base_arch, w.tag) or open_clip.get_pretrained_cfg(
        base_arch.replace("-quickgelu", ""), w.tag)
    if not pcfg:
        raise HarnessError(f"Model card '{card.name}': open_clip has no pretrained tag '{w.tag}' for "
                           f"'{base_arch}'. `python -c 'import open_clip; print(open_clip.list_pretrained())'` "
                           f"lists the valid pairs.")
    hub_id = pcfg.get("hf_hub", "")
    if hub_id:
        parts = hub_id.strip("/").split("/")
        repo = "/".join(parts[:2])
        names = [parts[2]] if len(parts) > 2 else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for filename in names:
            looked.append(f"Hugging Face cache ({repo}/{filename})")
            cached = _hf_cached(repo, filename)
            if cached:
                return Path(cached)
    if not hub_reachable():
        raise _offline_error(card, f"open_clip tag {base_arch}/{w.tag}", looked)
    try:
        path = open_clip.pretrained.download_pretrained(pcfg)
    except Exception as exc:
        raise HarnessError(f"Could not download open_clip weights {base_arch}/{w.tag}: {exc}") from exc
    if not path:
        raise HarnessError(f"open_clip returned no file for {base_arch}/{w.tag}.")
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------------
# state dicts

WEIGHTS_FORMATS = "a PyTorch checkpoint (torch.save: zip archive or legacy pickle), a TorchScript archive or a " \
                  "safetensors file"


def _sniff_format(path: Path) -> str | None:
    """'zip', 'pickle' or 'safetensors' from a file's first bytes; None for anything else."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def read_weights_file(path: Path) -> Any:
    """The object stored in a weights file (safetensors, torch.load with weights_only, or a TorchScript archive's
    state dict), read once; errors name the file and say what it is not."""
    import torch

    path = Path(path)
    try:
        kind = "safetensors" if path.suffix == ".safetensors" else _sniff_format(path)
    except OSError as exc:
        raise HarnessError(f"Could not read weights file {path}: {exc.strerror or exc}.") from exc
    if kind is None:
        with open(path, "rb") as f:
            head = f.read(24)
        raise HarnessError(f"Weights file {path} is not {WEIGHTS_FORMATS} (it starts with {head!r}). A download "
                           f"that saved an error page, or the wrong file: fetch it again or point --weights at "
                           f"the checkpoint.")
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except RuntimeError as exc:
            if "TorchScript" not in str(exc) and "jit" not in str(exc).lower():
                raise
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), "") or type(exc).__name__
        raise HarnessError(f"Weights file {path} looks like a {kind} file but could not be read "
                           f"({type(exc).__name__}: {first[:300]}). It may be truncated or damaged: fetch it again. "
                           f"Expected {WEIGHTS_FORMATS}.") from exc


def state_dict_from(obj: Any, source: str) -> dict:
    """A plain {key: tensor} state dict from what a weights file held: plain state dicts, open_clip training
    checkpoints ({'state_dict': ...}, 'module.' prefixes), OpenAI TorchScript state dicts."""
    sd = obj["state_dict"] if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj
    if not isinstance(sd, dict):
        raise HarnessError(f"Weights file {source} holds a {type(sd).__name__}, expected a state dict.")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    # OpenAI TorchScript archives carry these non-parameter entries.
    return {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}


def read_state_dict(path: Path) -> dict:
    """A plain state dict from a weights file (see :func:`state_dict_from`)."""
    return state_dict_from(read_weights_file(path), str(path))


def load_weights_strict(model: Any, state_dict: dict, source: str, allowed_missing: Callable[[str], bool] | None = None
                        ) -> list[str]:
    """Load a state dict; any missing or unexpected key is an error that lists them.

    ``allowed_missing`` may excuse some missing keys (e.g. gated blocks when initialising a REACT model from CLIP);
    the excused keys are returned so the caller can log them.
    """
    import torch

    model_keys = model.state_dict()
    missing = [k for k in model_keys if k not in state_dict]
    unexpected = [k for k in state_dict if k not in model_keys]
    excused = [k for k in missing if allowed_missing and allowed_missing(k)]
    missing = [k for k in missing if k not in excused]
    mismatched = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(model_keys[k].shape)}"
                  for k in model_keys if k in state_dict and tuple(state_dict[k].shape) != tuple(model_keys[k].shape)]
    if missing or unexpected or mismatched:
        def listing(title: str, keys: list[str]) -> str:
            if not keys:
                return ""
            shown = "\n    ".join(keys[:20])
            more = f"\n    ... and {len(keys) - 20} more" if len(keys) > 20 else ""
            return f"\n  {title} ({len(keys)}):\n    {shown}{more}"
        raise HarnessError(
            f"Weights {source} do not match the model architecture:"
            + listing("missing keys", missing) + listing("unexpected keys", unexpected)
            + listing("shape mismatches", mismatched)
            + "\nCheck the card's architecture (and quick_gelu) against the checkpoint.")
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state_dict.items()}, strict=not excused)
    return excused
