"""The layer rules of docs/ARCHITECTURE.md, checked on the source: dependencies point one way, harness never imports
training, no module grows past the size limit, and importing the project changes no library."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# The harness's layers are its packages, lowest first: a module's layer is the package it lives in, and it may import
# its own layer and the ones before it, never a later one. The package root (``harness``: the public face, a lazy
# Python API) and ``harness.__main__`` stand above every stage.
LAYERS = ["core", "cards", "models", "data", "store", "engine", "run", "report", "cli"]
TOP = len(LAYERS)
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int | None:
    """The layer of a harness module: its package's index in LAYERS; TOP for the package root and __main__; None
    for a module outside every stage package (which the test below refuses)."""
    parts = module.split(".")
    if parts[0] != "harness":
        return None
    if len(parts) == 1 or parts[1] == "__main__":
        return TOP
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _layer_name(index: int) -> str:
    return LAYERS[index] if index < TOP else "package root"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions (lazy imports count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module != "harness":  # `from harness import cards` imports harness.cards, not the root's API
                found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_every_harness_module_has_a_layer():
    unplaced = [_module_name(p) for p in _sources("harness") if _layer(_module_name(p)) is None]
    assert unplaced == [], "put these modules in a stage package (harness/<layer>/), see docs/ARCHITECTURE.md"


def test_the_stage_packages_are_the_layers():
    """The folder tree is the layer picture: every folder under harness/ holding code is a layer of LAYERS, and
    ARCHITECTURE.md names each one."""
    folders = sorted(p.name for p in (REPO / "harness").iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(LAYERS)
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert [name for name in LAYERS if f"harness/{name}/" not in text] == []


@pytest.mark.parametrize("upper", ["training", "retrieval"])
def test_harness_never_imports_training(upper):
    """training/ and retrieval/ stand on the harness; the harness never imports them."""
    offenders = {_module_name(p): sorted(m for m in _imports(p) if m == upper or m.startswith(upper + "."))
                 for p in _sources("harness")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_harness_dependencies_point_one_way():
    wrong = []
    for path in _sources("harness"):
        name = _module_name(path)
        own = _layer(name)
        for imported in _imports(path):
            if not imported.startswith("harness"):
                continue
            target = _layer(imported)
            if target is not None and target > own:
                wrong.append(f"{name} ({_layer_name(own)}) imports {imported} ({_layer_name(target)})")
    assert wrong == []


@pytest.mark.parametrize("package", ["harness", "training", "retrieval", "scripts", "benchmarks"])
def test_no_module_over_the_size_limit(package):
    big = {str(p.relative_to(REPO)): n for p in _sources(package)
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}, f"split these modules by stage (limit {MAX_LINES} lines)"


@pytest.mark.slow
def test_importing_the_project_changes_no_library():
    """Import every module of harness and training: OpenCLIP's builders, config and pretrained registries, and timm's
    augmentation ops are exactly as before. Then build a REACT model and the REACT training transform: the library
    functions are still untouched (the project edits only its own model/transform instances)."""
    code = r"""
import importlib, pkgutil, sys
import open_clip, open_clip.model, open_clip.factory
import timm.data.auto_augment as aa
def snapshot():
    return {
        "build_vision_tower": open_clip.model._build_vision_tower,
        "build_text_tower": open_clip.model._build_text_tower,
        "models": tuple(open_clip.list_models()),
        "pretrained": tuple(open_clip.list_pretrained()),
        "config_paths": tuple(map(str, open_clip.factory._MODEL_CONFIG_PATHS)),
        "timm_ops": dict(aa.NAME_TO_OP),
        "timm_posterize": aa.posterize,
        "resblock_forward": open_clip.transformer.ResidualAttentionBlock.forward,
    }
before = snapshot()
import harness, training, retrieval
for pkg in (harness, training, retrieval):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
after_import = snapshot()
changed = [k for k in before if before[k] != after_import[k]]
assert not changed, f"importing changed: {changed}"
from harness.models.factory import create_model
from training.augment import timm_train_transform
model = create_model("react_tiny-ViT-32px")
timm_train_transform({"use_timm": True, "auto_augment": "rand-m9-mstd0.5-inc1"}, 32, (0.5,) * 3, (0.5,) * 3)
after_build = snapshot()
changed = [k for k in before if k not in ("models", "config_paths") and before[k] != after_build[k]]
assert not changed, f"building changed: {changed}"
assert not any(m.startswith("react_") for m in open_clip.list_models()), "REACT names leaked into OpenCLIP"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_a_built_wheel_ships_the_cards_and_writes_to_the_current_directory(tmp_path):
    """`pip install .` (not editable): the wheel holds every card and config, `harness ls`/`validate` work from it,
    and results/cache/reports default to the current directory, not the install location."""
    import shutil

    wheel_dir, target, work, source = tmp_path / "wheel", tmp_path / "site", tmp_path / "work", tmp_path / "src"
    work.mkdir()
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "demo",
                                                                "results", "cache", "reports", "logs", "__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(wheel_dir), str(source)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel, = wheel_dir.glob("*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for card in (REPO / "harness").rglob("*.yaml"):  # noqa: B007
        assert str(card.relative_to(REPO)) in names
    for config in (REPO / "harness" / "models" / "configs").rglob("*.json"):
        assert str(config.relative_to(REPO)) in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "harness = harness.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                          str(wheel)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    code = ("import harness, harness.core.paths as p, sys; from harness.cli import main; "
            "print(harness.__file__); print(p.results_dir(), p.cache_dir(), p.reports_dir()); "
            "sys.exit(main(['validate']) or main(['ls', 'datasets']))")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(target))  # the installed copy, not this checkout
    assert lines[1] == f"{work / 'results'} {work / 'cache'} {work / 'reports'}"
    from harness.cards import dataset_card_names

    # the wheel holds every dataset card of this checkout: the installed copy lists as many as the registry here
    assert "0 invalid" in out.stdout and f"{len(dataset_card_names())} dataset cards" in out.stdout
