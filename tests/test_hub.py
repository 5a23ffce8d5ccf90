"""Checkpoints and distribution: save_pretrained / strict loading, the pretrained index, Hub push and pull.

Hub traffic goes through the real huggingface_hub client (``hf_hub_download``, ``HfApi``) against
:class:`LocalHub`, a small HTTP server on 127.0.0.1 that this file starts. It speaks the Hub routes the
client uses: repo creation, branch creation, preupload, ndjson commits, and file resolve (HEAD/GET with
``X-Repo-Commit``, ``ETag``, ``Content-Length`` and ``X-Error-Code`` on 404s). In-process tests point
``huggingface_hub.constants`` at it; the environment-variable tests (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``,
``HF_HUB_CACHE``) run in a subprocess, because huggingface_hub reads them at import time.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file, save_file
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo import hub
from lyadeq_zoo.fileio import sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
ARCH = "tiny_hub_test_net"
ZOO_NAME = "tiny_hubtest"  # from <tmp>/hubtest/tiny.yaml


class TinyNet(nn.Module):
    """Images ``(N, in_chans, img_size, img_size)`` in [0, 1] -> logits ``(N, num_classes)``.

    Normalise, linear to ``width``, batch norm, ReLU, linear head: parameters and buffers, like a zoo model.
    """

    def __init__(
        self,
        num_classes: int = 3,
        width: int = 8,
        in_chans: int = 1,
        img_size: int = 4,
        mean: float = 0.5,
        std: float = 0.25,
    ) -> None:
        super().__init__()
        self.mean, self.std = mean, std
        self.body = nn.Linear(in_chans * img_size * img_size, width)
        self.norm = nn.BatchNorm1d(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.body(((x - self.mean) / self.std).flatten(1)))))


if ARCH not in lz.list_components("model"):
    lz.register("model", ARCH)(TinyNet)


def tiny_model(**options: Any) -> nn.Module:
    """A TinyNet with non-trivial batch-norm statistics (so buffers matter in the round trip)."""
    model = lz.build_model({"model": {"type": ARCH, **options}})
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 1, 4, 4))
    return model.eval()


def outputs(model: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.rand(5, 1, 4, 4, generator=generator))


# -- a local Hub --------------------------------------------------------------------------------------
class LocalHub(ThreadingHTTPServer):
    """In-memory model repos: ``repos[repo_id][commit] = {path: bytes}``, ``refs[repo_id][branch] = commit``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.refs: dict[str, dict[str, str]] = {}
        self.log: list[tuple[str, str]] = []
        self.commit_messages: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add_repo(self, repo_id: str) -> None:
        commit = hashlib.sha1(f"init {repo_id}".encode()).hexdigest()
        self.repos[repo_id] = {commit: {}}
        self.refs[repo_id] = {"main": commit}

    def commit(self, repo_id: str, branch: str, files: dict[str, bytes], message: str) -> str:
        parent = self.refs[repo_id][branch]
        tree = {**self.repos[repo_id][parent], **files}
        digest = hashlib.sha1(parent.encode())
        for path in sorted(tree):
            digest.update(path.encode() + hashlib.sha256(tree[path]).digest())
        commit = digest.hexdigest()
        self.repos[repo_id][commit] = tree
        self.refs[repo_id][branch] = commit
        self.commit_messages.append(message)
        return commit

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id][self.refs[repo_id].get(revision, revision)]


class _HubHandler(BaseHTTPRequestHandler):
    server: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, code: str, message: str, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            404, body, {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}, head=head
        )

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    # file resolve: /{org}/{repo}/resolve/{revision}/{path}
    def _resolve(self, head: bool) -> None:
        parts = urlparse(self.path).path.lstrip("/").split("/")
        self.server.log.append(("HEAD" if head else "GET", self.path))
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error("RepoNotFound", "unknown route", head)
        repo_id, revision, filename = f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:]))
        with self.server.lock:
            if repo_id not in self.server.repos:
                return self._error("RepoNotFound", f"Repository {repo_id} not found", head)
            commit = self.server.refs[repo_id].get(revision, revision)
            if commit not in self.server.repos[repo_id]:
                return self._error("RevisionNotFound", f"Revision {revision} not found", head)
            tree = self.server.repos[repo_id][commit]
        if filename not in tree:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        content = tree[filename]
        etag = f'"{hashlib.sha256(content).hexdigest()}"'
        self._send(
            200, content, {"ETag": etag, "X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}, head=head
        )
        return None

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self._resolve(head=True)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._resolve(head=False)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = urlparse(self.path).path
        body = self._body()
        self.server.log.append(("POST", path))
        parts = path.strip("/").split("/")
        if path == "/api/validate-yaml":
            # The client sends README.md before uploading it; check its metadata header the way the Hub
            # would need it: a YAML mapping that ModelCard parses (model-index included).
            content = json.loads(body)["content"]
            try:
                if not content.startswith("---\n"):
                    raise ValueError("no YAML metadata header")
                ModelCard(content, ignore_metadata_errors=False)
            except Exception as err:  # noqa: BLE001 - any failure is a validation error
                return self._json(400, {"errors": [{"message": str(err)}], "warnings": []})
            return self._json(200, {"errors": [], "warnings": []})
        with self.server.lock:
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}"
                url = f"{self.server.url}/{repo_id}"
                if repo_id in self.server.repos:
                    return self._json(409, {"error": "You already created this model repo", "url": url})
                self.server.add_repo(repo_id)
                return self._json(200, {"url": url, "name": repo_id})
            if len(parts) >= 6 and parts[:2] == ["api", "models"]:
                repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], unquote("/".join(parts[5:]))
                if repo_id not in self.server.repos:
                    return self._error("RepoNotFound", f"Repository {repo_id} not found")
                refs = self.server.refs[repo_id]
                if action == "branch":
                    if revision in refs:
                        return self._json(409, {"error": f"branch {revision} exists"})
                    refs[revision] = refs["main"]
                    return self._json(200, {})
                if revision not in refs:
                    return self._error("RevisionNotFound", f"Revision {revision} not found")
                if action == "preupload":
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._json(200, {"files": modes})
                if action == "commit":
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    header = next(item["value"] for item in lines if item["key"] == "header")
                    files = {
                        item["value"]["path"]: base64.b64decode(item["value"]["content"])
                        for item in lines
                        if item["key"] == "file"
                    }
                    if len(files) != sum(item["key"] != "header" for item in lines):
                        return self._json(400, {"error": "LocalHub only takes regular files"})
                    commit = self.server.commit(repo_id, revision, files, header["summary"])
                    return self._json(
                        200,
                        {
                            "commitUrl": f"{self.server.url}/{repo_id}/commit/{commit}",
                            "commitOid": commit,
                            "pullRequestUrl": None,
                        },
                    )
        return self._error("RepoNotFound", f"unknown route {path}")


@pytest.fixture
def local_hub() -> Iterator[LocalHub]:
    server = LocalHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub_env(local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    """Point the in-process huggingface_hub at the local Hub and an empty cache (as HF_ENDPOINT would)."""
    monkeypatch.setattr(hf_constants, "ENDPOINT", local_hub.url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", local_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")  # never sent anywhere but 127.0.0.1
    return local_hub


@pytest.fixture(scope="session")
def zoo_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A config-backed zoo entry of TinyNet (like configs/<dataset>/<variant>.yaml), registered once."""
    if ZOO_NAME not in lz.list_models():
        root = tmp_path_factory.mktemp("zoo-configs")
        (root / "hubtest").mkdir()
        (root / "hubtest" / "tiny.yaml").write_text(
            f"model: {{type: {ARCH}, width: 8}}\nmeta: {{description: 'TinyNet for hub tests'}}\n"
        )
        assert lz.register_zoo_configs(root) == [ZOO_NAME]
    return ZOO_NAME


def write_index_file(path: Path, name: str, **entry: Any) -> Path:
    path.write_text(json.dumps({name: {"filename": hub.WEIGHTS_NAME, **entry}}))
    return path


# -- save_pretrained and strict local loading -------------------------------------------------------------
def test_round_trip_gives_identical_outputs_and_complete_metadata(tmp_path: Path) -> None:
    model = tiny_model()
    metrics = {"clean": 91.5, "pgd": {"8/255": 40.25}, "note": "tiny"}
    folder = lz.hub.save_pretrained(
        model,
        tmp_path / "ckpt",
        metrics=metrics,
        dataset="mnist",
        train_command="python tools/train.py tiny.yaml",
        epochs=3,
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted(hub.CHECKPOINT_FILES)

    loaded = lz.create_model(f"local-dir:{folder}")
    assert not loaded.training
    assert torch.equal(outputs(loaded), outputs(model))
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    info = json.loads((folder / "config.json").read_text())
    assert info["zoo_version"] == lz.__version__
    assert info["config"] == model.config
    assert info["metrics"] == metrics and info["epochs"] == 3
    assert info["input"]["mean"] == 0.5 and info["input"]["std"] == 0.25  # TinyNet's defaults
    assert info["input"]["range"] == [0.0, 1.0]
    assert info["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert load_file(folder / "model.safetensors").keys() == model.state_dict().keys()

    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and "lyadeq-zoo" in data["tags"]
    results = data["model-index"][0]["results"]
    assert {m["name"]: m["value"] for r in results for m in r["metrics"]} == {"clean": 91.5, "pgd/8/255": 40.25}
    assert "| pgd/8/255 | 40.25 |" in card.text
    assert "python tools/train.py tiny.yaml" in card.text and "Epochs run: 3" in card.text
    assert "Lyapunov-Stable Deep Equilibrium Models" in card.text and "2304.12707" in card.text
    assert "Chu, Haoyu and Wei, Shikui and Liu, Ting and Zhao, Yao and Miyatake, Yuto" in card.text


def test_card_summarises_evaluate_result(tmp_path: Path) -> None:
    """An lz.evaluate result becomes percent rows: clean, each attack at each eps, worst case."""
    from lyadeq_zoo.evaluation import evaluate

    model = tiny_model()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    suite = [{"type": "pgd", "eps": ["2/255", "8/255"], "steps": 2}, {"type": "fgsm", "eps": ["8/255"]}]
    result = evaluate(model, [(x, y)], suite, progress=False, checks=False)
    result["clean_accuracy"] = float("nan")  # non-finite numbers are stored as null
    folder = hub.save_pretrained(model, tmp_path / "ckpt", metrics=result, dataset="cifar10")
    info = json.loads((folder / "config.json").read_text())
    assert info["metrics"]["clean"] == result["clean"] and info["metrics"]["clean_accuracy"] is None
    card = ModelCard.load(folder / "README.md")
    rows = {m["name"]: m["value"] for r in card.data.to_dict()["model-index"][0]["results"] for m in r["metrics"]}
    pgd8 = next(item for item in result["attacks"][0]["results"] if item["eps_255"] == 8.0)
    assert rows["clean accuracy (%)"] == pytest.approx(100 * result["clean"]["accuracy"])
    assert rows["pgd @ eps 8/255 (%)"] == pytest.approx(100 * pgd8["accuracy"])
    assert rows["worst case @ eps 8/255 (%)"] == pytest.approx(100 * result["worst_case"][-1]["accuracy"])
    assert set(rows) == {
        "clean accuracy (%)",
        "pgd @ eps 2/255 (%)",
        "pgd @ eps 8/255 (%)",
        "fgsm @ eps 8/255 (%)",
        "worst case @ eps 2/255 (%)",
        "worst case @ eps 8/255 (%)",
    }
    assert card.data.to_dict()["datasets"] == ["cifar10"]
    assert "8 test samples" in card.text


def test_zoo_model_round_trip(tmp_path: Path) -> None:
    """A real zoo model (orthogonal head parametrisation, ICNN, batch norms) survives the round trip."""
    assert "lyadeq_mnist" in lz.list_models(), "zoo config configs/mnist/lyadeq.yaml is missing"
    model = lz.create_model("lyadeq_mnist", solver={"max_iter": 5}).eval()
    folder = hub.save_pretrained(model, tmp_path / "lyadeq_mnist", metrics={"clean": 12.5})
    info = json.loads((folder / "config.json").read_text())
    assert info["dataset"] == "mnist" and info["input"]["mean"] == model.config["model"]["mean"]
    loaded = lz.create_model(f"local-dir:{folder}")
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_into_existing_folder_replaces_files_and_keeps_others(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "train_log.txt").write_text("epoch 1\n")
    hub.save_pretrained(tiny_model(), folder)
    second = tiny_model(width=6)
    hub.save_pretrained(second, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*hub.CHECKPOINT_FILES, "train_log.txt"])
    assert torch.equal(outputs(lz.create_model(f"local-dir:{folder}")), outputs(second))
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_save_needs_model_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.config"):
        hub.save_pretrained(nn.Linear(2, 2), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _rewrite_weights(folder: Path, edit: Any) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def _corrupt(kind: str, folder: Path) -> None:
    weights, config = folder / "model.safetensors", folder / "config.json"
    if kind == "missing tensor":
        _rewrite_weights(folder, lambda t: t.pop("head.weight"))
    elif kind == "unexpected tensor":
        _rewrite_weights(folder, lambda t: t.update({"head.extra": torch.zeros(2)}))
    elif kind == "wrong shape":
        _rewrite_weights(folder, lambda t: t.update({"head.weight": torch.zeros(3, 9)}))
    elif kind == "wrong dtype":
        _rewrite_weights(folder, lambda t: t.update({"norm.num_batches_tracked": torch.zeros((), dtype=torch.float32)}))
    elif kind == "truncated file":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif kind == "flipped byte":  # the file still parses and fits: only the recorded sha256 tells
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif kind == "garbage bytes":
        weights.write_bytes(hashlib.sha256(b"not weights").digest() * 2)
    elif kind == "torch.save archive":
        torch.save(tiny_model().state_dict(), weights)
    elif kind == "torch.save legacy pickle":
        torch.save(tiny_model().state_dict(), weights, _use_new_zipfile_serialization=False)
    elif kind == "text file":
        weights.write_text("these are not weights\n")
    elif kind == "empty file":
        weights.write_bytes(b"")
    elif kind == "git lfs pointer":
        weights.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{'a' * 64}\nsize 1234\n")
    elif kind == "html page":
        weights.write_text("<!DOCTYPE html>\n<html><body>Access denied</body></html>\n")
    elif kind == "missing weights":
        weights.unlink()
    elif kind == "wrong zoo major version":
        info = json.loads(config.read_text())
        info["zoo_version"] = f"{int(lz.__version__.split('.')[0]) + 1}.0.0"
        config.write_text(json.dumps(info))
    elif kind == "missing config.json":
        config.unlink()
    elif kind == "config.json not JSON":
        config.write_text("{not json")
    elif kind == "config without model":
        info = json.loads(config.read_text())
        del info["config"]["model"]
        config.write_text(json.dumps(info))
    else:
        raise AssertionError(kind)


CORRUPTIONS = {
    "missing tensor": r"model\.safetensors: tensor 'head\.weight' is missing \(the config builds it with shape",
    "unexpected tensor": r"tensor 'head\.extra' \(shape \(2,\)\) is unexpected",
    "wrong shape": r"model\.safetensors: tensor 'head\.weight' has shape \(3, 9\), the config builds \(3, 8\)",
    "wrong dtype": r"tensor 'norm\.num_batches_tracked' has dtype torch\.float32, the config builds torch\.int64",
    "truncated file": r"model\.safetensors: truncated safetensors file: \d+ bytes, but its header lays out \d+ "
    r"bytes; tensor '[\w.]+' is cut off\. Copy or download it again",
    "flipped byte": r"model\.safetensors has sha256 [0-9a-f]{64}, but config\.json records [0-9a-f]{64}",
    "garbage bytes": r"model\.safetensors: not a safetensors file, nor a format lyadeq-zoo recognises \(first bytes "
    r"([0-9a-f]{2} ){7}[0-9a-f]{2}\): it is corrupt or of another format\. Copy or download it again",
    "torch.save archive": r"model\.safetensors: not a safetensors file: it is a PyTorch zip archive \(torch\.save's "
    r"format: a zip holding a pickle, [\w/]*data\.pkl\)\. It was NOT loaded: lyadeq-zoo reads weights only from "
    r"safetensors and never unpickles a file .* `safetensors\.torch\.save_file\(state_dict, path\)`",
    "torch.save legacy pickle": r"model\.safetensors: not a safetensors file: it is a PyTorch pickle \(torch\.save's "
    r"legacy format\)\. It was NOT loaded: .* `safetensors\.torch\.save_file\(state_dict, path\)`",
    "text file": r"model\.safetensors: not a safetensors file: it is text, starting 'these are not weights\\n'\. Copy "
    r"or download it again",
    "empty file": r"model\.safetensors: not a safetensors file: it is empty \(0 bytes\)",
    "git lfs pointer": r"model\.safetensors: not a safetensors file: it is a Git LFS pointer .* `git lfs pull`",
    "html page": r"model\.safetensors: not a safetensors file: it is an HTML page, e\.g\. an error or login page",
    "missing weights": r"model\.safetensors: weights file not found",
    "wrong zoo major version": r"config\.json: saved by lyadeq-zoo \d+\.0\.0, which is incompatible .*major version",
    "missing config.json": r"config\.json not found",
    "config.json not JSON": r"config\.json: not valid JSON",
    "config without model": r"config\.json: key 'config' must hold the resolved config with a 'model' section",
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_is_refused_with_specific_error(kind: str, tmp_path: Path) -> None:
    folder = hub.save_pretrained(tiny_model(), tmp_path / "ckpt")
    _corrupt(kind, folder)
    with pytest.raises(hub.CheckpointError, match=CORRUPTIONS[kind]):
        lz.create_model(f"local-dir:{folder}")


def test_overrides_that_change_shapes_are_refused(tmp_path: Path) -> None:
    model = tiny_model()
    folder = hub.save_pretrained(model, tmp_path / "ckpt")
    with pytest.raises(
        hub.CheckpointError, match=r"tensor 'body\.weight' has shape \(8, 16\), the config builds \(12, 16\)"
    ):
        lz.create_model(f"local-dir:{folder}", width=12)
    # Overrides that keep the architecture are fine (here: a different input normalisation).
    changed = lz.create_model(f"local-dir:{folder}", mean=0.0)
    assert changed.config["model"]["mean"] == 0.0
    assert torch.equal(changed.head.weight, model.head.weight)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(
        hub.CheckpointError, match=r"nope does not exist; local-dir: names the folder lz\.save_pretrained"
    ):
        lz.create_model(f"local-dir:{tmp_path / 'nope'}")
    folder = hub.save_pretrained(tiny_model(), tmp_path / "ckpt")
    pattern = rf"model\.safetensors is a file, not a folder; .*: use local-dir:{re.escape(str(folder))}$"
    with pytest.raises(hub.CheckpointError, match=pattern):
        lz.create_model(f"local-dir:{folder / 'model.safetensors'}")


class _MakesDirWhenUnpickled:
    """Unpickling this object creates the folder ``marker``: proof that a pickle was (or was not) opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip archive", "legacy pickle"])
def test_torch_save_file_is_named_and_never_unpickled(zip_format: bool, tmp_path: Path) -> None:
    folder = hub.save_pretrained(tiny_model(), tmp_path / "ckpt")
    marker = tmp_path / "unpickled"
    payload = {**tiny_model().state_dict(), "trap": _MakesDirWhenUnpickled(marker)}
    torch.save(payload, folder / "model.safetensors", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(hub.CheckpointError, match="It was NOT loaded") as err:
        lz.create_model(f"local-dir:{folder}")
    assert ("PyTorch zip archive" if zip_format else "PyTorch pickle") in str(err.value)
    assert not marker.exists(), "the pickle was unpickled"
    # The file itself is left as it was: the message says how to convert it.
    assert "safetensors.torch.save_file(state_dict, path)" in str(err.value)


def _safetensors_layout(path: Path) -> tuple[int, dict[str, Any]]:
    """(header length, parsed JSON header) of a safetensors file, read from its bytes."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return length, json.loads(data[8 : 8 + length])


def test_truncated_safetensors_names_the_tensor_cut_off(tmp_path: Path) -> None:
    folder = hub.save_pretrained(tiny_model(), tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    length, header = _safetensors_layout(weights)
    by_offset = sorted((spec["data_offsets"], name) for name, spec in header.items() if name != "__metadata__")
    (begin, end), name = by_offset[1]  # cut inside the second tensor: the ones after it are missing
    weights.write_bytes(data[: 8 + length + begin + 1])
    later = len(by_offset) - 2
    with pytest.raises(hub.CheckpointError) as err:
        lz.create_model(f"local-dir:{folder}")
    assert str(err.value) == (
        f"local-dir:{folder}: model.safetensors: truncated safetensors file: {8 + length + begin + 1} bytes, but "
        f"its header lays out {len(data)} bytes; tensor {name!r} is cut off; {later} later tensor(s) are missing "
        "altogether. Copy or download it again, or re-save it with lz.save_pretrained."
    )
    weights.write_bytes(data[:20])
    with pytest.raises(
        hub.CheckpointError,
        match=rf"its JSON header is {length} bytes long, but the file ends after "
        "20 bytes, inside the header",
    ):
        lz.create_model(f"local-dir:{folder}")


def test_safetensors_header_that_lies_about_a_tensor_is_named(tmp_path: Path) -> None:
    folder = hub.save_pretrained(tiny_model(), tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    length, header = _safetensors_layout(weights)
    header["head.bias"]["shape"] = [4]  # 3 float32 in the data, 4 in the header
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (length - len(text))  # same length: the data offsets stay right
    weights.write_bytes(data[:8] + text + data[8 + length :])
    with pytest.raises(
        hub.CheckpointError,
        match=r"corrupt safetensors file: its JSON header is malformed \(tensor "
        r"'head\.bias' \(F32, shape \[4\]\) needs 16 bytes, its data_offsets span 12\)",
    ):
        lz.create_model(f"local-dir:{folder}")


def test_no_pickle_loader_in_hub_code() -> None:
    hub_modules = sorted((REPO_ROOT / "lyadeq_zoo" / "hub").glob("*.py"))
    assert hub_modules, "lyadeq_zoo/hub/ holds no modules"
    for path in (
        *hub_modules,
        REPO_ROOT / "lyadeq_zoo" / "factory.py",
        REPO_ROOT / "lyadeq_zoo" / "publishing.py",
        REPO_ROOT / "lyadeq_zoo" / "timm_interop.py",
        REPO_ROOT / "hubconf.py",
    ):
        text = path.read_text()
        assert "torch.load" not in text and "import pickle" not in text, path


# -- pretrained index ---------------------------------------------------------------------------------------
def _publish_to_local_hub(local_hub: LocalHub, model: nn.Module, repo_id: str = "zoo/tiny") -> str:
    info = lz.push_to_hub(model, repo_id, api=HfApi(endpoint=local_hub.url, token="hf_local_test_token"))
    return info.oid


def test_pretrained_from_hub_verified(
    hub_env: LocalHub, zoo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = lz.create_model(zoo_name)
    with torch.no_grad():
        trained.head.weight.normal_()
    commit = _publish_to_local_hub(hub_env, trained)
    weights = hub_env.files("zoo/tiny")["model.safetensors"]
    index_file = write_index_file(
        tmp_path / "pretrained.json",
        zoo_name,
        hf_hub_id="zoo/tiny",
        revision=commit,
        sha256=hashlib.sha256(weights).hexdigest(),
    )
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    assert hub.has_pretrained(zoo_name) and zoo_name in lz.list_models(pretrained=True)
    assert "lyadeq_mnist" not in lz.list_models(pretrained=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Hub path must not warn
        model = lz.create_model(zoo_name, pretrained=True)
    assert torch.equal(outputs(model), outputs(trained))
    assert ("GET", f"/zoo/tiny/resolve/{commit}/model.safetensors") in hub_env.log
    # The second load is served by the huggingface_hub cache under HF_HUB_CACHE.
    cached = list(Path(hf_constants.HF_HUB_CACHE).rglob("model.safetensors"))
    assert len(cached) == 1 and cached[0].read_bytes() == weights


def test_pretrained_sha256_mismatch_is_refused(
    hub_env: LocalHub, zoo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = _publish_to_local_hub(hub_env, lz.create_model(zoo_name))
    index_file = write_index_file(
        tmp_path / "pretrained.json", zoo_name, hf_hub_id="zoo/tiny", revision=commit, sha256="0" * 64
    )
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    with pytest.raises(hub.ChecksumError, match=r"sha256 is [0-9a-f]{64}, but the pretrained index records 0{64}"):
        lz.create_model(zoo_name, pretrained=True)


def test_pretrained_falls_back_to_shipped_copy_when_hub_unreachable(
    hub_env: LocalHub, zoo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = lz.create_model(zoo_name)
    shipped = hub.save_pretrained(trained, tmp_path / "shipped" / zoo_name)
    sha = sha256_file(shipped / "model.safetensors")
    index_file = write_index_file(
        tmp_path / "pretrained.json",
        zoo_name,
        hf_hub_id="zoo/never-pushed",
        revision="main",
        sha256=sha,
        local_path=str(shipped),
    )
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    hub.index._warned_fallback.discard(zoo_name)
    with pytest.warns(UserWarning, match=rf"pretrained '{zoo_name}': could not get model\.safetensors from the Hub"):
        model = lz.create_model(zoo_name, pretrained=True)
    assert torch.equal(outputs(model), outputs(trained))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per name
        lz.create_model(zoo_name, pretrained=True)
    assert hub_env.log == []  # offline mode: no request reached the endpoint

    # Online but the repo does not exist: still the shipped copy.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    assert torch.equal(outputs(lz.create_model(zoo_name, pretrained=True)), outputs(trained))
    assert hub_env.log and all("never-pushed" in path for _, path in hub_env.log)

    # A shipped copy is checked too.
    (shipped / "model.safetensors").write_bytes((shipped / "model.safetensors").read_bytes()[:-1] + b"\x00")
    with pytest.raises(hub.ChecksumError, match=str(shipped / "model.safetensors")):
        lz.create_model(zoo_name, pretrained=True)


def test_corrupt_hub_cache_file_names_the_blob_to_delete(
    hub_env: LocalHub, zoo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged file in the Hub cache: the message names the cache entry; deleting it as told fixes it."""
    trained = lz.create_model(zoo_name)
    commit = _publish_to_local_hub(hub_env, trained)
    weights = hub_env.files("zoo/tiny")["model.safetensors"]
    sha = hashlib.sha256(weights).hexdigest()
    index_file = write_index_file(tmp_path / "p.json", zoo_name, hf_hub_id="zoo/tiny", revision=commit, sha256=sha)
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    lz.create_model(zoo_name, pretrained=True)  # fills the cache
    (link,) = Path(hf_constants.HF_HUB_CACHE).rglob("snapshots/*/model.safetensors")
    blob = link.resolve()
    blob.write_bytes(weights[:-1] + bytes([weights[-1] ^ 0xFF]))
    with pytest.raises(hub.ChecksumError) as err:
        lz.create_model(zoo_name, pretrained=True)
    message = str(err.value)
    assert message.startswith(f"hf-hub:zoo/tiny@{commit}/model.safetensors: sha256 is ")
    assert f"the pretrained index records {sha} ({index_file})" in message
    assert "`hf cache rm model/zoo/tiny`" in message and f"removing {blob} and the link {link}" in message
    blob.unlink()  # as the message says: the next load downloads the file again
    downloads = hub_env.log.count(("GET", f"/zoo/tiny/resolve/{commit}/model.safetensors"))
    assert torch.equal(outputs(lz.create_model(zoo_name, pretrained=True)), outputs(trained))
    assert hub_env.log.count(("GET", f"/zoo/tiny/resolve/{commit}/model.safetensors")) == downloads + 1


def _flipped_copy(source: Path, target: Path) -> Path:
    """``target``: a copy of the file ``source`` with its last byte flipped (still a valid safetensors file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


SHIPPED = "lyadeq_mnist"  # a shipped zoo model with a local_path copy


def test_damaged_copy_inside_the_package_advises_reinstalling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The package's own copy differs from the index: reinstall it, never delete it."""
    entry = hub.read_index(hub.INDEX_PATH)[SHIPPED]
    package = tmp_path / "site-packages" / "lyadeq_zoo"  # an installed package with one damaged weights file
    relative = Path(entry["local_path"]) / entry["filename"]
    damaged = _flipped_copy(hub.shipped_folder(entry["local_path"]) / entry["filename"], package / relative)
    monkeypatch.setattr(hub.index, "PACKAGE_DIR", package)
    index_file = write_index_file(
        tmp_path / "pretrained.json", SHIPPED, sha256=entry["sha256"], local_path=entry["local_path"]
    )
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    with pytest.raises(hub.ChecksumError) as err:
        lz.create_model(SHIPPED, pretrained=True)
    message = str(err.value)
    assert message.startswith(f"{damaged}: sha256 is {sha256_file(damaged)}, but the pretrained index records")
    assert "The copy shipped inside the installed lyadeq-zoo package differs from the index" in message
    assert "Do not delete it; reinstall the package: `pip install --force-reinstall lyadeq-zoo`" in message
    assert f"`git checkout -- lyadeq_zoo/{relative.as_posix()}`" in message
    assert "Delete " not in message and "hf cache" not in message


def test_damaged_local_copy_elsewhere_advises_restoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = hub.read_index(hub.INDEX_PATH)[SHIPPED]
    mirror = tmp_path / "mirror" / SHIPPED
    _flipped_copy(hub.shipped_folder(entry["local_path"]) / entry["filename"], mirror / entry["filename"])
    index_file = write_index_file(tmp_path / "pretrained.json", SHIPPED, sha256=entry["sha256"], local_path=str(mirror))
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    with pytest.raises(hub.ChecksumError) as err:
        lz.create_model(SHIPPED, pretrained=True)
    message = str(err.value)
    assert "restore it from where it was copied from (do not delete it" in message
    assert "Delete " not in message and "reinstall" not in message


def test_index_file_that_is_not_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index_file = tmp_path / "pretrained.json"
    index_file.write_bytes(b"\x80\x04\x95binary")
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    with pytest.raises(
        hub.CheckpointError, match=rf"{re.escape(str(index_file))}: the pretrained index is not valid JSON"
    ):
        hub.read_index()


def test_pretrained_without_any_source(
    hub_env: LocalHub, zoo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_file = write_index_file(tmp_path / "p.json", zoo_name, hf_hub_id="zoo/missing", sha256="a" * 64)
    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    with pytest.raises(hub.CheckpointError, match=r"the Hub could not provide model\.safetensors from zoo/missing"):
        lz.create_model(zoo_name, pretrained=True)
    monkeypatch.setenv(hub.INDEX_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(hub.CheckpointError, match=rf"no pretrained weights for '{zoo_name}'"):
        lz.create_model(zoo_name, pretrained=True)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"sha256": "xyz", "hf_hub_id": "a/b"}, "'sha256' must be 64 lowercase hex digits"),
        ({"sha256": "a" * 64}, "needs 'hf_hub_id' or 'local_path'"),
        ({"sha256": "a" * 64, "hf_hub_id": "a/b", "url": "x"}, r"unknown key\(s\) \['url'\]"),
    ],
)
def test_malformed_index_entries(tmp_path: Path, entry: dict[str, str], message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"some_model": entry}))
    with pytest.raises(hub.CheckpointError, match=message):
        hub.read_index(path)


def test_shipped_index_is_valid() -> None:
    entries = hub.read_index(hub.INDEX_PATH)
    for name, entry in entries.items():
        assert name in lz.list_models(), f"pretrained.json lists {name!r}, which is not a zoo model"
        if entry.get("local_path"):
            assert (hub.shipped_folder(entry["local_path"]) / entry["filename"]).is_file()


# -- hf-hub: loading and push_to_hub ------------------------------------------------------------------------
def test_push_model_then_load_hf_hub(hub_env: LocalHub) -> None:
    model = tiny_model()
    api = HfApi(endpoint=hub_env.url, token="hf_local_test_token")
    info = lz.push_to_hub(model, "org/tiny", api=api)
    files = hub_env.files("org/tiny")
    assert sorted(files) == sorted(hub.CHECKPOINT_FILES)
    assert lz.__version__ in hub_env.commit_messages[-1]
    assert json.loads(files["config.json"])["config"] == model.config

    for name in ("hf-hub:org/tiny", f"hf-hub:org/tiny@{info.oid}"):
        assert torch.equal(outputs(lz.create_model(name)), outputs(model))
    # Both files of one load come from one commit: the weights are pinned to the config's commit.
    gets = [path for method, path in hub_env.log if method == "GET" and "model.safetensors" in path]
    assert gets and all(info.oid in path for path in gets)


def test_truncated_hf_hub_checkpoint_in_cache_says_delete_the_cache_entry(hub_env: LocalHub) -> None:
    model = tiny_model()
    info = lz.push_to_hub(model, "org/tiny", api=HfApi(endpoint=hub_env.url, token="hf_local_test_token"))
    name = f"hf-hub:org/tiny@{info.oid}"
    lz.create_model(name)  # fills the cache
    (link,) = Path(hf_constants.HF_HUB_CACHE).rglob("snapshots/*/model.safetensors")
    blob = link.resolve()
    blob.write_bytes(blob.read_bytes()[:-4])
    with pytest.raises(hub.CheckpointError) as err:
        lz.create_model(name)
    message = str(err.value)
    assert message.startswith(f"{name}: model.safetensors: truncated safetensors file: ")
    assert message.endswith(
        "It is a file of the Hugging Face cache: delete it so that it is downloaded again, with `hf cache rm "
        f"model/org/tiny` (older huggingface_hub: `huggingface-cli delete-cache`) or by removing {blob} and the "
        f"link {link}; then try again."
    )
    blob.unlink()
    assert torch.equal(outputs(lz.create_model(name)), outputs(model))


def test_push_folder_to_branch_and_load_revision(hub_env: LocalHub, tmp_path: Path) -> None:
    first, second = tiny_model(), tiny_model(width=5)
    api = HfApi(endpoint=hub_env.url, token="hf_local_test_token")
    lz.push_to_hub(first, "org/tiny", api=api)
    folder = hub.save_pretrained(second, tmp_path / "second", metrics={"clean": 1.0})
    info = lz.push_to_hub(folder, "org/tiny", api=api, revision="v2", commit_message="second model")
    assert hub_env.commit_messages[-1] == f"second model (lyadeq-zoo {lz.__version__})"
    assert hub_env.files("org/tiny", "v2") == {name: (folder / name).read_bytes() for name in hub.CHECKPOINT_FILES}
    assert hub_env.refs["org/tiny"]["v2"] == info.oid
    assert torch.equal(outputs(lz.create_model("hf-hub:org/tiny@v2")), outputs(second))
    assert torch.equal(outputs(lz.create_model("hf-hub:org/tiny")), outputs(first))


def test_push_refuses_broken_folder_before_uploading(hub_env: LocalHub, tmp_path: Path) -> None:
    folder = hub.save_pretrained(tiny_model(), tmp_path / "ckpt")
    _corrupt("wrong shape", folder)
    with pytest.raises(hub.CheckpointError, match="has shape"):
        lz.push_to_hub(folder, "org/tiny", api=HfApi(endpoint=hub_env.url, token="hf_local_test_token"))
    assert hub_env.log == []


def test_hf_hub_errors(hub_env: LocalHub) -> None:
    hub_env.add_repo("org/empty")
    with pytest.raises(hub.CheckpointError, match=r"the repo has no config\.json"):
        lz.create_model("hf-hub:org/empty")
    with pytest.raises(ValueError, match="expected hf-hub:<org>/<repo>"):
        lz.create_model("hf-hub:a/b/c")


# -- environment variables, in a fresh interpreter ----------------------------------------------------------
_SUBPROCESS_SCRIPT = """
import json, sys, warnings
sys.path.insert(0, {tests!r})
import torch
import test_hub as t
import lyadeq_zoo as lz
lz.register_zoo_configs(__import__("pathlib").Path({configs!r}))
warnings.simplefilter("always")
out = {{}}
for name in {names!r}:
    with warnings.catch_warnings(record=True) as caught:
        try:
            model = lz.create_model(name, pretrained=name == t.ZOO_NAME)
            out[name] = {{"outputs": t.outputs(model).tolist()}}
        except Exception as err:
            out[name] = {{"error": f"{{type(err).__name__}}: {{err}}"}}
    out[name]["warnings"] = [str(w.message) for w in caught if "pretrained" in str(w.message)]
print("RESULT" + json.dumps(out))
"""


def _run_fresh(env_updates: dict[str, str], names: list[str], configs: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(env_updates, OMP_NUM_THREADS="1", HF_HUB_DISABLE_TELEMETRY="1")
    script = _SUBPROCESS_SCRIPT.format(tests=str(Path(__file__).parent), configs=str(configs), names=names)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.mark.slow  # one fresh interpreter (importing torch takes ~5 s on 2 busy cores)
def test_env_offline_mode_reads_cache_and_falls_back(hub_env: LocalHub, zoo_name: str, tmp_path: Path) -> None:
    """A real ``HF_HUB_OFFLINE=1`` / ``HF_HUB_CACHE`` / ``HF_ENDPOINT`` environment, read at import time.

    The cache is filled here (in-process client pointed at the local Hub); the fresh interpreter must load
    from it without a single request, report an uncached repo clearly, and use a pretrained entry's shipped
    copy, warning once."""
    model = tiny_model()
    info = lz.push_to_hub(model, "org/tiny", api=HfApi(endpoint=hub_env.url, token="hf_local_test_token"))
    pinned = f"hf-hub:org/tiny@{info.oid}"
    lz.create_model(pinned)  # fills the cache at HF_HUB_CACHE
    configs = Path(lz.get_component("model", zoo_name).zoo_config).parent.parent
    shipped_model = lz.create_model(zoo_name)
    shipped = hub.save_pretrained(shipped_model, tmp_path / "shipped")
    index_file = write_index_file(
        tmp_path / "p.json",
        zoo_name,
        hf_hub_id="org/not-cached",
        revision="main",
        sha256=sha256_file(shipped / "model.safetensors"),
        local_path=str(shipped),
    )
    hub_env.log.clear()
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": hf_constants.HF_HUB_CACHE,
        "HF_ENDPOINT": hub_env.url,  # reachable, but offline mode must not use it
        hub.INDEX_ENV: str(index_file),
    }
    result = _run_fresh(env, [pinned, "hf-hub:org/never-downloaded", zoo_name], configs)
    assert result[pinned]["outputs"] == outputs(model).tolist()
    assert "neither reachable on the Hub nor in the local cache" in result["hf-hub:org/never-downloaded"]["error"]
    assert result[zoo_name]["outputs"] == outputs(shipped_model).tolist()
    assert len(result[zoo_name]["warnings"]) == 1 and "using the copy shipped at" in result[zoo_name]["warnings"][0]
    assert hub_env.log == []


# -- tools/publish.py -----------------------------------------------------------------------------------------
def _publish_tool() -> Any:
    return importlib.import_module("lyadeq_zoo.cli.publish")  # tools/publish.py is a wrapper around its main


def test_publish_tool_pushes_ships_and_records(
    hub_env: LocalHub, zoo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish = _publish_tool()
    trained = lz.create_model(zoo_name)
    with torch.no_grad():
        trained.body.weight.normal_()
    folder = hub.save_pretrained(trained, tmp_path / "final", metrics={"clean": 50.0})
    index_file = tmp_path / "index" / "pretrained.json"
    index_file.parent.mkdir()
    index_file.write_text("{}\n")
    api = HfApi(endpoint=hub_env.url, token="hf_local_test_token")
    entry = publish.run(
        [zoo_name, str(folder), "--repo-id", "zoo/tiny", "--ship", "--index", str(index_file)], api=api
    )
    written = json.loads(index_file.read_text())[zoo_name]
    assert written == entry
    assert written["sha256"] == sha256_file(folder / "model.safetensors")
    assert written["revision"] == hub_env.refs["zoo/tiny"]["main"] and written["hf_hub_id"] == "zoo/tiny"
    assert written["local_path"] == f"pretrained/{zoo_name}"
    assert (index_file.parent / "pretrained" / zoo_name / "model.safetensors").read_bytes() == (
        folder / "model.safetensors"
    ).read_bytes()

    monkeypatch.setenv(hub.INDEX_ENV, str(index_file))
    assert torch.equal(outputs(lz.create_model(zoo_name, pretrained=True)), outputs(trained))

    # Weights of another architecture are refused before anything is pushed or recorded.
    other = hub.save_pretrained(tiny_model(width=3), tmp_path / "other")
    hub_env.log.clear()
    with pytest.raises(hub.CheckpointError, match="has shape"):
        publish.run([zoo_name, str(other), "--repo-id", "zoo/tiny", "--index", str(index_file)], api=api)
    assert hub_env.log == [] and json.loads(index_file.read_text())[zoo_name] == written
