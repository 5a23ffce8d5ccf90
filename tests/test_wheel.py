"""What ``pip install lyadeq-zoo`` gets: the wheel and the sdist ship the whole zoo, and an installed wheel serves
it from any folder, console scripts included.

The slow tests build both distributions offline from a copy of the checkout (what a fresh clone holds: no
``.venv``, no ``*.egg-info``, no build outputs), with this environment's setuptools and no build isolation:
the wheel with ``pip wheel --no-deps --no-build-isolation --no-index`` (what ``pip install .`` builds), the sdist
through setuptools' PEP 517 hook ``build_sdist`` (what ``python -m build --sdist --no-isolation`` calls). The
wheel is then installed with ``pip install --target`` into a folder that a fresh interpreter sees through
``PYTHONPATH`` alone, run from yet another folder, so that the checkout cannot be what it imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

import lyadeq_zoo as lz
from lyadeq_zoo import factory
from lyadeq_zoo.errors import ConfigError

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (CI's version)")

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# A fresh clone holds none of these; an sdist built next to a stale *.egg-info could list files from it.
NOT_IN_A_CLONE = (".git", ".venv", "*.egg-info", "build", "dist", "runs", "out", "__pycache__", ".*_cache")
TOOL_WRAPPERS = ("eval", "benchmark", "publish", "results_page", "quickstart", "train", "gpu_zoo")


def _zoo_names() -> list[str]:
    """The zoo as the checkout's configs define it (``configs/<dataset>/<variant>.yaml``)."""
    return sorted(
        f"{p.stem}_{p.parent.name}"
        for p in (REPO / "configs").glob("*/*.yaml")
        if p.parent.name != "eval" and not p.name.startswith("_")
    )


def _shipped_files() -> dict[str, list[str]]:
    """Checkout files every distribution must carry, by kind, as paths relative to the repository root."""

    def files(folder: Path, pattern: str) -> list[str]:
        return sorted(
            p.relative_to(REPO).as_posix()
            for p in folder.glob(pattern)
            if p.is_file() and "__pycache__" not in p.parts
        )

    package = REPO / "lyadeq_zoo"
    return {
        "configs": files(REPO / "configs", "**/*.yaml"),
        "pretrained": files(package / "pretrained", "**/*") + ["lyadeq_zoo/pretrained.json"],
        "samples": files(package / "data" / "samples", "*"),
        "modules": files(package, "**/*.py"),
    }


def _in_wheel(path: str) -> str:
    """Where checkout file ``path`` lands inside the wheel (configs/ is shipped as lyadeq_zoo/_configs/)."""
    return "lyadeq_zoo/_configs/" + path.removeprefix("configs/") if path.startswith("configs/") else path


def _run(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**(os.environ if env is None else env), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# -- fast: the command-line entry points and the checkout's configs ----------------------------------
def test_console_scripts_and_tools_run_the_package_mains() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    expected = {"eval", "train", "benchmark", "publish", "results_page", "quickstart", "gpu_zoo"}
    assert {name.removeprefix("lyadeq-").replace("-", "_") for name in scripts} == expected
    for script, target in scripts.items():
        module_name, _, function = target.partition(":")
        assert module_name == f"lyadeq_zoo.cli.{script.removeprefix('lyadeq-').replace('-', '_')}"
        assert callable(getattr(importlib.import_module(module_name), function)), target
    for name in TOOL_WRAPPERS:
        spec = importlib.util.spec_from_file_location(f"wrapper_{name}", REPO / "tools" / f"{name}.py")
        wrapper = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(wrapper)
        assert wrapper.main is importlib.import_module(f"lyadeq_zoo.cli.{name}").main, f"tools/{name}.py"


def test_a_checkout_reads_its_configs_folder() -> None:
    assert lz.configs_dir() == REPO / "configs"
    assert {"lyadeq_mnist", "plain_mnist", "lyadeq_trades_cifar10"} <= set(_zoo_names())  # guards the glob
    assert set(_zoo_names()) <= set(lz.list_models())  # other tests may register models of their own


def test_configs_dir_prefers_the_installed_copy_and_names_both_places_when_neither_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site-packages" / "lyadeq_zoo"
    (package / "_configs").mkdir(parents=True)
    (package.parent / "configs").mkdir()  # some other distribution's stray top-level folder
    monkeypatch.setattr(factory, "__file__", str(package / "factory.py"))
    assert lz.configs_dir() == package / "_configs"
    (package / "_configs").rmdir()
    assert lz.configs_dir() == package.parent / "configs"  # the layout of a checkout
    (package.parent / "configs").rmdir()
    with pytest.raises(ConfigError, match=r"has no zoo configs: neither .*_configs \(an installed wheel\) nor "):
        lz.configs_dir()


# -- slow: build, install, use -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"wheel": path, "sdist": path}`` built from a clone-like copy of the checkout."""
    root = tmp_path_factory.mktemp("dists")
    source, out = root / "source", root / "dist"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
          str(source)])
    hook = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    sdist_name = _run([sys.executable, "-c", hook, str(out)], cwd=source).stdout.strip().splitlines()[-1]
    (wheel,) = out.glob("lyadeq_zoo-*.whl")
    return {"wheel": wheel, "sdist": out / sdist_name}


@pytest.fixture(scope="module")
def installed(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed with ``pip install --target`` (its console scripts in ``TARGET/bin``)."""
    target = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
          str(dists["wheel"])])
    return target


def _fresh_env(target: Path) -> dict[str, str]:
    """Only ``target`` on the path (the checkout is not), one thread, no Hub traffic."""
    return {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_wheel_ships_every_config_weight_card_and_sample(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    for kind, files in _shipped_files().items():
        missing = [f for f in files if _in_wheel(f) not in names]
        assert files and not missing, f"{kind} missing from the wheel: {missing}"
    assert any(n.startswith("lyadeq_zoo/_configs/eval/") for n in names)
    for script, target in PYPROJECT["project"]["scripts"].items():
        assert f"{script} = {target}" in scripts


@pytest.mark.slow
def test_sdist_ships_every_config_weight_card_and_sample(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        members = sdist.getnames()
    top = members[0].split("/")[0]
    names = {m.removeprefix(f"{top}/") for m in members}
    for kind, files in _shipped_files().items():
        missing = [f for f in files if f not in names]
        assert files and not missing, f"{kind} missing from the sdist: {missing}"
    assert {"pyproject.toml", "setup.py", "README.md"} <= names  # what building the wheel from it needs


_USE_THE_INSTALLED_ZOO = """
import json, sys
import torch
import lyadeq_zoo as lz
from lyadeq_zoo.evaluation import list_suites, load_suite
from lyadeq_zoo.hub.index import resolve_pretrained_file

torch.set_num_threads(1)
model = lz.create_model("lyadeq_cifar10", pretrained=True).eval()
data = lz.get_component("dataset", "cifar10")(split="test", root="sample", limit=100)
x = torch.stack([data[i][0] for i in range(len(data))])
y = torch.tensor([int(data[i][1]) for i in range(len(data))])
with torch.no_grad():
    logits = model(x)
torch.save({"logits": logits, "labels": y}, sys.argv[1])
print(json.dumps({
    "file": lz.__file__,
    "configs_dir": str(lz.configs_dir()),
    "weights": str(resolve_pretrained_file("lyadeq_cifar10")),
    "models": lz.list_models(),
    "pretrained": lz.list_models(pretrained=True),
    "suites": list_suites(),
    "paper_attacks": [a["name"] for a in load_suite("paper", dataset="cifar10")["attacks"]],
}))
"""


@pytest.mark.slow
def test_installed_wheel_serves_the_zoo_from_any_folder(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "logits.pt"
    proc = _run([sys.executable, "-c", _USE_THE_INSTALLED_ZOO, str(out)], cwd=elsewhere, env=_fresh_env(installed))
    seen = json.loads(proc.stdout.strip().splitlines()[-1])

    for key in ("file", "configs_dir", "weights"):
        assert Path(seen[key]).resolve().is_relative_to(installed.resolve()), (key, seen[key])
    assert sorted(seen["models"]) == _zoo_names()
    assert sorted(seen["pretrained"]) == sorted(p.name for p in (REPO / "lyadeq_zoo" / "pretrained").iterdir())
    assert seen["suites"] == sorted(p.stem for p in (REPO / "configs" / "eval").glob("*.yaml"))
    assert seen["paper_attacks"] == ["I-FGSM", "PGD"]

    result = torch.load(out)
    logits, labels = result["logits"], result["labels"]
    assert logits.shape == (100, 10) and torch.isfinite(logits).all()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy > 0.2, f"{accuracy:.0%} on 100 shipped CIFAR-10 test images (chance: 10%, card: ~42%)"
    # The same configs and weights as the checkout's: the same logits.
    checkout_model = lz.create_model("lyadeq_cifar10", pretrained=True).eval()
    data = lz.get_component("dataset", "cifar10")(split="test", root="sample", limit=100)
    with torch.no_grad():
        expected = checkout_model(torch.stack([data[i][0] for i in range(len(data))]))
    torch.testing.assert_close(logits, expected)


@pytest.mark.slow
def test_installed_console_script_lists_every_suite(installed: Path, tmp_path: Path) -> None:
    script = installed / "bin" / "lyadeq-eval"
    assert script.is_file(), sorted(p.name for p in (installed / "bin").iterdir())
    proc = _run([str(script), "--help"], cwd=tmp_path, env=_fresh_env(installed))
    assert proc.stdout.startswith("usage: lyadeq-eval")
    for suite in sorted(p.stem for p in (REPO / "configs" / "eval").glob("*.yaml")):
        assert f"\n  {suite} " in proc.stdout, suite
