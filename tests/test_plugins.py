"""Entry-point plugins, with real distributions: the example plugin installed by pip into a temporary
directory, and hand-written ``*.dist-info`` folders for the failure modes. Each scenario runs in a fresh
interpreter, since discovery happens once per process: every test here is marked ``slow``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # each test starts a fresh interpreter importing torch (~1.5 s and more)


def run_python(code: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=240,
    )


def make_distribution(root: Path, name: str, module_source: str, entry_points: str) -> Path:
    """A minimal installed distribution: a module plus ``<name>-0.1.dist-info`` with entry points."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return root


@pytest.fixture(scope="module")
def installed_example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/plugin installed for real (pip, offline: no index, no build isolation, no deps)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO / "examples" / "plugin")],
        check=True, capture_output=True, text=True, timeout=240, cwd=build,
    )
    assert list(target.glob("lyadeq_zoo_example_plugin-*.dist-info/entry_points.txt"))
    return target


def test_installed_plugin_is_discovered_without_import(installed_example_plugin: Path) -> None:
    result = run_python(
        """
        import json, torch
        import lyadeq_zoo as lz
        solve = lz.get_component("solver", "damped_picard")
        W = torch.eye(3) * 0.5
        z, info = solve(lambda z: torch.tanh(z @ W + 1.0), torch.zeros(4, 3), max_iter=200, tol=1e-6)
        head = lz.build_component("head", {"type": "cosine", "scale": 5.0}, in_features=3, num_classes=2)
        print(json.dumps({
            "solvers": lz.list_components("solver", "damped*"),
            "heads": lz.list_components("head", "cos*"),
            "origin": lz.registry.registry("solver").origin("damped_picard"),
            "rel": info["rel_residual"].max().item(),
            "logits": list(head(z).shape),
        }))
        """,
        installed_example_plugin,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["solvers"] == ["damped_picard"]
    assert out["heads"] == ["cosine"]
    assert out["origin"] == "plugin:lyadeq-zoo-example-plugin"
    assert out["rel"] <= 1e-6
    assert out["logits"] == [4, 2]


def test_installed_plugin_components_meet_the_component_contracts(installed_example_plugin: Path) -> None:
    """test_contracts.py, run with the example plugin installed, checks its solver and head like built-ins."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(installed_example_plugin), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_contracts.py"),
         "-k", "damped_picard or cosine"],
        env=env, capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\b2 passed\b", result.stdout)  # the plugin's solver and head, each against its contract


def test_plugin_config_keys_are_validated(installed_example_plugin: Path) -> None:
    result = run_python(
        """
        from lyadeq_zoo.config import validate_component, ConfigError
        validate_component("solver", {"type": "damped_picard", "damping": 0.3, "max_iter": 5}, ("s",))
        try:
            validate_component("solver", {"type": "damped_picard", "dampign": 0.3}, ("s",))
        except ConfigError as err:
            print("ERR", err)
        """,
        installed_example_plugin,
    )
    assert result.returncode == 0, result.stderr
    assert "ERR s.dampign" in result.stdout and "Did you mean 'damping'?" in result.stdout


def test_broken_plugin_warns_in_listing_and_raises_with_cause(tmp_path: Path) -> None:
    site = make_distribution(
        tmp_path, "lzbroken",
        "raise RuntimeError('plugin module exploded on import')\n",
        "[lyadeq_zoo.solvers]\nexploding = lzbroken:solve\n",
    )
    result = run_python(
        """
        import warnings
        import lyadeq_zoo as lz
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = lz.list_components("solver")
        print("LISTED", "exploding" in names)
        print("WARNED", any("exploding" in str(w.message) and "exploded" in str(w.message) for w in caught))
        try:
            lz.get_component("solver", "exploding")
        except lz.PluginLoadError as err:
            print("RAISED", err)
            print("CAUSE", type(err.__cause__).__name__, err.__cause__)
        """,
        site,
    )
    assert result.returncode == 0, result.stderr
    assert "LISTED False" in result.stdout
    assert "WARNED True" in result.stdout
    assert "RAISED solver 'exploding' comes from plugin 'lzbroken:solve' of distribution 'lzbroken'" in result.stdout
    assert "CAUSE RuntimeError plugin module exploded on import" in result.stdout


def test_builtin_wins_a_clash_unless_the_plugin_asks_to_override(tmp_path: Path) -> None:
    site = make_distribution(
        tmp_path, "lzclash",
        """
        def fake(*args, **kwargs):
            return "fake"

        def replacement(*args, **kwargs):
            return "replacement"
        replacement.__lyadeq_zoo_override__ = True
        """,
        "[lyadeq_zoo.datasets]\nmnist = lzclash:fake\ncifar10 = lzclash:replacement\n",
    )
    result = run_python(
        """
        import warnings
        import lyadeq_zoo as lz
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mnist = lz.get_component("dataset", "mnist")
        cifar = lz.get_component("dataset", "cifar10")
        print("MNIST", mnist.__module__)
        print("CIFAR", cifar())
        print("WARNED", any("ignored" in str(w.message) and "mnist" in str(w.message) for w in caught))
        """,
        site,
    )
    assert result.returncode == 0, result.stderr
    assert "MNIST lyadeq_zoo." in result.stdout
    assert "CIFAR replacement" in result.stdout
    assert "WARNED True" in result.stdout


def test_discovery_is_lazy_and_happens_once(tmp_path: Path) -> None:
    site = make_distribution(
        tmp_path, "lzcount",
        """
        import os
        LOADS = int(os.environ.get("LZCOUNT", "0")) + 1
        os.environ["LZCOUNT"] = str(LOADS)

        def solve(f, z0, *, max_iter=1, tol=0.0):
            return z0, {}
        """,
        "[lyadeq_zoo.solvers]\ncounted = lzcount:solve\n",
    )
    result = run_python(
        """
        import os
        import lyadeq_zoo as lz
        print("AFTER_IMPORT", os.environ.get("LZCOUNT"))
        lz.list_components("solver"); lz.get_component("solver", "counted"); lz.list_components("solver")
        print("AFTER_LOOKUPS", os.environ.get("LZCOUNT"))
        """,
        site,
    )
    assert result.returncode == 0, result.stderr
    assert "AFTER_IMPORT None" in result.stdout  # nothing loaded at import time
    assert "AFTER_LOOKUPS 1" in result.stdout


def test_plugin_solver_and_head_from_yaml_train_a_model(installed_example_plugin: Path, tmp_path: Path) -> None:
    """The installed plugin's solver and head, named in a YAML config, build a LyaDEQ that trains."""
    config = tmp_path / "plugin_lyadeq.yaml"
    config.write_text(
        f"_base_: {REPO / 'configs' / 'mnist' / 'lyadeq.yaml'}\n"
        "model:\n"
        "  solver: {type: damped_picard, max_iter: 40, tol: 1.0e-3, damping: 0.7}\n"
        "  head: {type: cosine, scale: 12.0}\n"
        "data: {type: mnist, root: sample}\n"
    )
    result = run_python(
        f"""
        import json, torch
        import lyadeq_zoo as lz
        from lyadeq_zoo.training import train
        model = lz.build_model({str(config)!r})
        before = {{k: v.clone() for k, v in model.state_dict().items()}}
        out = train({str(config)!r}, {str(tmp_path / 'run')!r}, progress=False, overrides=[
            "train.epochs=1", "train.batch_size=32", "train.limit_train=64", "train.limit_test=64",
            "train.final_eval=null", "train.eval_every_epochs=0",
        ])
        trained = out.model
        changed = [k for k, v in trained.state_dict().items() if k.startswith("head.")
                   and not torch.equal(v, before[k])]
        print(json.dumps({{
            "solver": type(trained).__name__ and trained.config["model"]["solver"]["type"],
            "head": type(trained.head).__name__,
            "head_changed": changed,
            "loss": [r["train_loss"] for r in out.history if "train_loss" in r],
            "rebuilt_same_keys": sorted(lz.build_model(trained.config).state_dict()) == sorted(before),
        }}))
        """,
        installed_example_plugin,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["solver"] == "damped_picard"
    assert out["head"] == "CosineHead"
    assert out["head_changed"] == ["head.weight"]
    assert out["loss"] and all(loss == loss and loss < 10 for loss in out["loss"])
    assert out["rebuilt_same_keys"] is True
