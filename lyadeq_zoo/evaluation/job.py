"""Evaluation as a job that loses nothing and scales out: ``lyadeq-eval MODEL --out DIR [--resume]``, also under
``torchrun``.

The images (the first ``n`` of the data set) are cut into fixed chunks of ``chunk_size`` (chunk ``k`` holds
images ``k*chunk_size .. (k+1)*chunk_size - 1``), each cut into attack batches of ``batch_size``. Batch ``j`` of
chunk ``k`` is seeded as batch ``k*chunk_size/batch_size + j`` of the whole evaluation (the seed of
:func:`lyadeq_zoo.evaluate`), so a chunk's numbers do not depend on which process ran it, when, or how the run was
split, and the merged result equals one ``evaluate(..., batch_size=batch_size)`` call's.

Files in ``DIR``:

* ``job.json``: the run's identity (model and its weights' sha256, suite contents, data set, split, root and limit,
  ``n``, seed, chunk and batch size); ``--resume`` with anything else is refused, naming what differs.
* ``records-rank<R>.jsonl``: one JSON line per finished chunk, appended and fsynced by the process of rank ``R``
  (:func:`~lyadeq_zoo.fileio.append_line_synced`): the chunk's per-image, per-attack outcomes, the solver
  statistics at each image's worst-case input, and the chunk's per-run timing and attack info. A chunk is done
  when its line is complete; a kill (``kill -9`` too) loses at most the chunk being evaluated, which
  ``--resume`` redoes. A truncated last line is cut off before the next append.
* ``result.json``: the merged result (same schema as ``--json``), written atomically by rank 0 at the end.

Under ``torchrun`` the pending chunks are dealt round-robin over the ranks (gloo on CPU, NCCL on CUDA); rank 0
waits for all, reads every records file and merges. The gradient-masking checks are computed once, on the merged
per-image data and the first batch of chunk 0, exactly as :func:`lyadeq_zoo.evaluate` does.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import Dataset, Subset

from ..attacks import AutoAttack
from ..errors import ConfigError, DataFormatError
from ..fileio import append_line_synced, write_json_atomic
from .checks import masking_checks
from .result import AttackRun, assemble_result, eps_key, run_info, worst_case_robust
from .runner import Tally, collect_batches, plan_runs, run_attacks
from .under_attack import CLEAN_SOLVER_FIELDS, CleanSolverStats, WorstCaseStability

JOB_FORMAT = "lyadeq-zoo-eval-job/1"
IDENTITY_FILE = "job.json"
RESULT_FILE = "result.json"
RECORDS_PATTERN = "records-rank*.jsonl"
STABILITY_FIELDS = ("rel_residual", "converged", "certified", "settled", "recorded")
PROCESS_GROUP_TIMEOUT = datetime.timedelta(days=7)  # ranks wait for the slowest one before rank 0 merges


# -- identity -------------------------------------------------------------------------------------------
def weights_sha256(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}\n".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def suite_sha256(suite: Mapping[str, Any]) -> str:
    """sha256 of the resolved suite's contents (attacks, options, eps, checks) as canonical JSON."""
    return hashlib.sha256(json.dumps(suite, sort_keys=True, default=repr).encode()).hexdigest()


def job_identity(
    *,
    model: Mapping[str, Any],
    weights: str,
    suite: Mapping[str, Any],
    data: Mapping[str, Any],
    n: int,
    seed: int,
    chunk_size: int,
    batch_size: int,
) -> dict[str, Any]:
    """What makes two runs the same job: ``model`` (``{"name", "source", "weights"}``), the weights' sha256,
    the suite's name and sha256, ``data`` (``{"dataset", "split", "root", "limit"}``), ``n`` images, the seed,
    and chunk and batch size (which fix every batch's seed)."""
    return {
        "format": JOB_FORMAT,
        "model": dict(model),
        "weights_sha256": weights,
        "suite": suite["name"],
        "suite_sha256": suite_sha256(suite),
        "data": dict(data),
        "n": n,
        "seed": seed,
        "chunk_size": chunk_size,
        "batch_size": batch_size,
    }


def differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``"key (was X, now Y)"`` for every identity key whose value differs."""
    return [
        f"{key} (was {stored.get(key)!r}, now {wanted.get(key)!r})"
        for key in sorted(set(stored) | set(wanted))
        if stored.get(key) != wanted.get(key)
    ]


def claim_directory(directory: Path, identity: Mapping[str, Any], *, resume: bool) -> None:
    """Store ``identity`` in a new job directory, or check it against the stored one on ``resume``.

    Raises :class:`ConfigError` when ``directory`` already holds a job and ``resume`` is false, or when the
    stored job's settings differ (each difference named).
    """
    path = directory / IDENTITY_FILE
    if path.exists():
        if not resume:
            raise ConfigError(
                f"{directory} already holds an evaluation job ({IDENTITY_FILE}); pass --resume to continue it "
                "or choose another --out"
            )
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise DataFormatError(f"{path}: not readable JSON ({err})") from err
        diff = differences(stored, identity)
        if diff:
            raise ConfigError(
                f"--resume refused: {directory} holds a job with other settings: " + "; ".join(diff)
                + ". Resume with the job's settings or choose another --out"
            )
        return
    if any(directory.glob(RECORDS_PATTERN)):
        raise ConfigError(f"{directory} holds chunk records but no {IDENTITY_FILE}; choose another --out")
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, identity)


# -- chunks ---------------------------------------------------------------------------------------------
def chunk_ranges(n: int, chunk_size: int) -> list[range]:
    """Chunk index -> image indices: ``range(k*chunk_size, min(n, (k+1)*chunk_size))``."""
    return [range(start, min(n, start + chunk_size)) for start in range(0, n, chunk_size)]


def evaluate_chunk(
    model: nn.Module,
    data: Dataset,
    suite: Mapping[str, Any],
    *,
    chunk: int,
    chunk_size: int,
    batch_size: int,
    n: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Run the suite on chunk ``chunk`` of ``data`` (model on ``device``, in eval mode) and return its record:
    ``{"chunk", "start", "n", "clean_seconds", "stability_seconds", "runs": [{"name", "eps", "seconds",
    "solver_not_converged", "info"}], "images": [{"image", "clean_correct", "outcomes": [int per run],
    "stability": {eps: {field: value}} | null, "clean_solver": {field: value} | null}]}``; outcomes are -1 not
    attacked, 0 broken, 1 still correct."""
    indices = chunk_ranges(n, chunk_size)[chunk]
    batches = collect_batches(model, Subset(data, list(indices)), None, batch_size)
    tally = run_attacks(model, batches, suite, device, seed, False, batch_offset=chunk * (chunk_size // batch_size))
    images = [_image_record(tally, local, image) for local, image in enumerate(indices)]
    return {
        "chunk": chunk,
        "start": indices.start,
        "n": len(indices),
        "clean_seconds": tally.clean_seconds,
        "stability_seconds": tally.stability_seconds,
        "runs": [
            {
                "name": run["spec"]["name"],
                "eps": run["eps"],
                "seconds": run["seconds"],
                "solver_not_converged": run["solver_not_converged"],
                "info": run_info(run["attack"]),
            }
            for run in tally.runs
        ],
        "images": images,
    }


def _image_record(tally: Tally, local: int, image: int) -> dict[str, Any]:
    """One image's entry of a chunk record: row ``local`` of the chunk's ``tally``, image ``image`` of the job."""
    stability = None
    if tally.stability is not None:
        stability = {repr(key): _row(store, STABILITY_FIELDS, local) for key, store in tally.stability.items()}
    clean_solver = None if tally.clean_solver is None else _row(tally.clean_solver, CLEAN_SOLVER_FIELDS, local)
    return {
        "image": image,
        "clean_correct": bool(tally.clean_correct[local]),
        "outcomes": [int(run["outcome"][local]) for run in tally.runs],
        "stability": stability,
        "clean_solver": clean_solver,
    }


def _row(store: Any, fields: tuple[str, ...], index: int) -> dict[str, float | bool]:
    """Entry ``index`` of each per-image tensor ``fields`` of ``store`` that it holds (a None field is left out)."""
    return {field: _scalar(getattr(store, field), index) for field in fields if getattr(store, field) is not None}


def _scalar(values: torch.Tensor, index: int) -> float | bool:
    value = values[index].item()
    return bool(value) if values.dtype == torch.bool else float(value)


def repair_records(path: Path) -> None:
    """Cut a truncated last line (a kill mid-append) off ``path`` so the next append starts a fresh line."""
    if not path.exists():
        return
    content = path.read_bytes()
    if content and not content.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(content.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def read_records(directory: Path) -> dict[int, dict[str, Any]]:
    """The finished chunks' records in ``directory`` by chunk index (every ``records-rank*.jsonl``; a last line
    without its newline is a chunk whose append a kill interrupted, and is skipped: it will be redone)."""
    done: dict[int, dict[str, Any]] = {}
    for path in sorted(directory.glob(RECORDS_PATTERN)):
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # the text after the last newline is unfinished
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path} line {number + 1}: not a chunk record ({err})") from err
            done.setdefault(int(record["chunk"]), record)
    return done


# -- merging --------------------------------------------------------------------------------------------
def merge_chunks(
    model: nn.Module,
    first_batch: tuple[torch.Tensor, torch.Tensor],
    suite: Mapping[str, Any],
    records: list[Mapping[str, Any]],
    *,
    seed: int,
    device: torch.device,
    dataset: str | None,
    checks: bool = True,
) -> dict[str, Any]:
    """One result from every chunk's record (in chunk order), as :func:`lyadeq_zoo.evaluate` would return it for
    all the images at once: per-image outcomes and worst-case statistics are concatenated, per-run seconds and
    unconverged counts summed, AutoAttack's flags merged; the masking checks are run on the merged data and
    ``first_batch`` (the first batch of chunk 0)."""
    images = [image for record in records for image in record["images"]]
    n = len(images)
    if [image["image"] for image in images] != list(range(n)):
        raise DataFormatError("the chunk records do not cover the images 0..n-1 exactly once")
    runs = plan_runs(model, suite, n)
    for r_index, run in enumerate(runs):
        parts = [record["runs"][r_index] for record in records]
        if any(part["name"] != run["spec"]["name"] or eps_key(part["eps"]) != eps_key(run["eps"]) for part in parts):
            raise DataFormatError(f"chunk records do not match the suite at run {r_index} ({run['spec']['name']})")
        run["outcome"] = torch.tensor([image["outcomes"][r_index] for image in images], dtype=torch.int8)
        run["seconds"] = sum(part["seconds"] for part in parts)
        counts = [part["solver_not_converged"] for part in parts if part["solver_not_converged"] is not None]
        run["solver_not_converged"] = sum(counts) if counts else None
        restore_run_info(run, [part["info"] for part in parts])
    clean_correct = torch.tensor([image["clean_correct"] for image in images], dtype=torch.bool)
    robust = worst_case_robust(runs, clean_correct)
    stability = _stability(images)
    result = assemble_result(
        suite, runs, clean_correct, robust, seed=seed, device=device, dataset=dataset, stability=stability,
        clean_solver=_clean_solver(images),
    )
    if checks:
        result["checks"] = masking_checks(model, first_batch, runs, clean_correct, dict(suite), device)
    result["timing"] = {
        "total_seconds": 0.0,
        "clean_seconds": round(sum(r["clean_seconds"] for r in records), 4),
    }
    if stability is not None:
        result["timing"]["stability_seconds"] = round(sum(r["stability_seconds"] for r in records), 4)
    return result


def _stability(images: list[Mapping[str, Any]]) -> dict[float, WorstCaseStability] | None:
    """The per-eps worst-case statistics of all images, or None when the model has no solver diagnostics."""
    measured = {image["stability"] is not None for image in images}
    if len(measured) > 1:
        raise DataFormatError("some chunk records have solver statistics and others not; rerun without --resume")
    if images[0]["stability"] is None:
        return None
    out = {}
    for key_text, first in images[0]["stability"].items():
        rows = [image["stability"][key_text] for image in images]
        out[eps_key(float(key_text))] = WorstCaseStability(
            rel_residual=torch.tensor([row["rel_residual"] for row in rows], dtype=torch.float64),
            converged=torch.tensor([row["converged"] for row in rows], dtype=torch.bool),
            certified=torch.tensor([row["certified"] for row in rows], dtype=torch.bool) if "certified" in first
            else None,
            settled=torch.tensor([row["settled"] for row in rows], dtype=torch.bool),
            recorded=torch.tensor([row["recorded"] for row in rows], dtype=torch.bool),
        )
    return out


def _clean_solver(images: list[Mapping[str, Any]]) -> CleanSolverStats | None:
    """The solver statistics at every image's clean input, or None when the model has none (or when some records
    were written before they were recorded: the summary is then left out rather than computed on a part)."""
    rows = [image.get("clean_solver") for image in images]
    if any(row is None for row in rows):
        return None
    lyapunov = "certified" in rows[0]
    return CleanSolverStats(
        nstep=torch.tensor([row["nstep"] for row in rows], dtype=torch.float64),
        converged=torch.tensor([row["converged"] for row in rows], dtype=torch.bool),
        certified=torch.tensor([row["certified"] for row in rows], dtype=torch.bool) if lyapunov else None,
    )


def restore_run_info(run: AttackRun, infos: list[Mapping[str, Any]]) -> None:
    """Give the merged run's fresh AutoAttack object the flags of all chunks (counts summed, in order of first
    appearance, the first message kept) and the settings it ran with, as one object over all batches holds."""
    attack = run["attack"]
    if not isinstance(attack, AutoAttack) or not any(infos):
        return
    flags: dict[str, dict[str, Any]] = {}
    for info in infos:
        for flag in info.get("autoattack_flags", []):
            entry = flags.get(flag["flag"])
            if entry is None:
                flags[flag["flag"]] = dict(flag)
            else:
                entry["count"] += flag["count"]
    # The attack keeps these in private state filled by its calls; the merged run made no call of its own.
    attack._flags = flags
    # The settings of the last chunk that called AutoAttack (a chunk with nothing to attack never built it).
    built = [info["autoattack_settings"] for info in infos if info.get("autoattack_settings")]
    attack._settings = dict(built[-1]) if built else {}


# -- the job --------------------------------------------------------------------------------------------
def process_group(device: str | None) -> tuple[int, int, torch.device, bool]:
    """``(rank, world_size, device, created_here)`` from torchrun's environment (one process without it).
    Under torchrun, CUDA (the default when available, or ``device`` ``cuda``) uses ``cuda:LOCAL_RANK`` and NCCL
    (with gloo for CPU collectives), the CPU gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    if world == 1:
        return 0, 1, torch.device(device or ("cuda" if use_cuda else "cpu")), False
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    created = not dist.is_initialized()
    if created:
        backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)
    return dist.get_rank(), dist.get_world_size(), dev, created


def run_job(
    model: nn.Module,
    data: Dataset,
    suite: Mapping[str, Any],
    directory: str | Path,
    identity: Mapping[str, Any],
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Evaluate the pending chunks of the job in ``directory`` that fall to ``rank`` of ``world_size`` (every
    ``world_size``-th pending chunk), wait for the other ranks, and on rank 0 merge all chunks and write
    ``result.json``. Returns the merged result on rank 0, None elsewhere.

    ``identity``: :func:`job_identity` of this run (its ``n``, ``seed``, ``chunk_size``, ``batch_size`` and
    ``data.dataset`` are used); ``model`` is moved to ``device``, run in eval mode and its mode restored.
    """
    directory = Path(directory)
    start = time.perf_counter()
    n, seed = int(identity["n"]), int(identity["seed"])
    chunk_size, batch_size = int(identity["chunk_size"]), int(identity["batch_size"])
    check_chunk_size(chunk_size, batch_size)
    if rank == 0:
        claim_directory(directory, identity, resume=resume)
    _wait_for_all(world_size)
    records_path = directory / f"records-rank{rank}.jsonl"
    repair_records(records_path)
    done = read_records(directory)
    pending = [k for k in range(len(chunk_ranges(n, chunk_size))) if k not in done]
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        with parametrize.cached():
            for record in _chunk_records(
                model, data, suite, pending[rank::world_size], identity, device, progress=progress and rank == 0
            ):
                append_line_synced(records_path, json.dumps(record))
            _wait_for_all(world_size)
            if rank != 0:
                return None
            done = read_records(directory)
            missing = [k for k in range(len(chunk_ranges(n, chunk_size))) if k not in done]
            if missing:
                raise DataFormatError(f"chunks {missing} have no record after every rank finished; run --resume")
            first_batch = collect_batches(model, Subset(data, list(range(min(batch_size, n)))), None, batch_size)[0]
            result = merge_chunks(
                model, first_batch, suite, [done[k] for k in sorted(done)], seed=seed, device=device,
                dataset=identity["data"].get("dataset"),
            )
    finally:
        model.train(was_training)
    result["timing"]["total_seconds"] = round(time.perf_counter() - start, 3)
    result["job"] = {"chunks": len(done), "chunk_size": chunk_size}
    return result


def check_chunk_size(chunk_size: int, batch_size: int) -> None:
    """Raise :class:`ConfigError` unless ``chunk_size`` is a positive multiple of ``batch_size``."""
    if chunk_size <= 0 or batch_size <= 0 or chunk_size % batch_size:
        raise ConfigError(
            f"chunk size {chunk_size} must be a positive multiple of the batch size {batch_size} (every batch's "
            "seed depends on its place in the whole evaluation); pass e.g. --chunk-size "
            f"{max(batch_size, chunk_size - chunk_size % batch_size)}"
        )


def _chunk_records(
    model: nn.Module,
    data: Dataset,
    suite: Mapping[str, Any],
    chunks: list[int],
    identity: Mapping[str, Any],
    device: torch.device,
    *,
    progress: bool,
) -> Iterator[dict[str, Any]]:
    """:func:`evaluate_chunk` of each of ``chunks`` in turn, with a progress bar over them."""
    from tqdm.auto import tqdm  # a progress bar only; not imported with the package

    with tqdm(total=len(chunks), disable=not progress, desc="chunks", unit="chunk", leave=False) as bar:
        for chunk in chunks:
            yield evaluate_chunk(
                model, data, suite, chunk=chunk, chunk_size=int(identity["chunk_size"]),
                batch_size=int(identity["batch_size"]), n=int(identity["n"]), seed=int(identity["seed"]),
                device=device,
            )
            bar.update(1)


def write_job_result(result: Mapping[str, Any], directory: str | Path) -> Path:
    """Write ``result`` as ``DIR/result.json`` (atomically)."""
    return write_json_atomic(Path(directory) / RESULT_FILE, dict(result))


def _wait_for_all(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
