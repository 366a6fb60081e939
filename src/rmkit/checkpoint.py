"""Resumable training checkpoints, written atomically with safetensors + JSON (no pickle): trainable weights,
optimiser and scheduler state, every RNG, and the step (which fixes the data position). Knows nothing of data.

Layout: checkpoints/{step-N/, latest (the name of the newest complete one), index.json (each kept checkpoint with its
step and last validation), .tmp-step-N/ (being written; never read)}. A write that fails (full disk, no permission)
raises CheckpointError and leaves the previous checkpoints as they were.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"
INDEX = "index.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (for example a full disk); the last good checkpoint is untouched."""


def _write_failed(root: Path, step: int, exc: OSError) -> CheckpointError:
    """Remove the half-written temp folder (it holds disk space) and say what failed and what is left."""
    shutil.rmtree(root / f".tmp-step-{step}", ignore_errors=True)
    reason = f"{exc.strerror} [{errno.errorcode.get(exc.errno, exc.errno)}]" if exc.strerror else str(exc)
    last = latest_checkpoint(root)
    return CheckpointError(f"cannot write checkpoint step-{step} in {root}: {reason}. The last good checkpoint, "
                           f"{last or 'none yet'}, is untouched; free disk space or make the directory writable, "
                           "then run the same command again to resume from it.")


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state_dict into tensors (for safetensors) and the JSON rest."""
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                    train_state: dict[str, Any], rank: int = 0, is_main: bool = True) -> Path | None:
    """Write checkpoints/step-N atomically: every rank writes its RNG file, the main rank the rest and the rename.

    Call on every rank, then barrier, then `commit_checkpoint` on the main rank. Raises CheckpointError when the
    files cannot be written.
    """
    try:
        return _write_checkpoint(root, step, model, optimizer, scheduler, train_state, rank, is_main)
    except OSError as exc:
        raise _write_failed(root, step, exc) from exc


def _write_checkpoint(root: Path, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                      train_state: dict[str, Any], rank: int, is_main: bool) -> Path | None:
    tmp = root / f".tmp-step-{step}"
    tmp.mkdir(parents=True, exist_ok=True)
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, tmp / f"rng-{rank}.safetensors")
    (tmp / f"rng-{rank}.json").write_text(json.dumps(rng_meta))
    if not is_main:
        return None
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file({**{f"model.{k}": v for k, v in trainable_state(model).items()}, **opt_tensors}, tmp / "state.safetensors")
    meta = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "train": train_state}
    (tmp / "state.json").write_text(json.dumps(meta))
    return tmp


def commit_checkpoint(root: Path, step: int, keep: int = 1) -> Path:
    """Rename the finished temp folder into place, point `latest` at it, keep the `keep` newest checkpoints up to
    this step (later ones belong to a run resumed from further back and are dropped), and rewrite index.json."""
    try:
        final = _commit(root, step)
    except OSError as exc:
        raise _write_failed(root, step, exc) from exc
    steps = sorted(int(p.name.split("-")[1]) for p in root.glob("step-*"))
    kept = [s for s in steps if s <= step][-keep:]
    for old in set(steps) - set(kept):
        shutil.rmtree(root / f"step-{old}", ignore_errors=True)
    try:
        _replace_text(root / INDEX, json.dumps([_summary(root / f"step-{s}") for s in kept], indent=1) + "\n")
    except OSError as exc:  # the checkpoint itself is complete: only the index is stale
        raise _write_failed(root, step, exc) from exc
    return final


def _commit(root: Path, step: int) -> Path:
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    for f in tmp.iterdir():  # flush file contents before the rename makes them visible
        with open(f, "rb+") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _replace_text(root / LATEST, final.name)
    return final


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _summary(path: Path) -> dict[str, Any]:
    """One index.json entry: the checkpoint, its step, and the last validation before it (None before the first)."""
    meta = json.loads((path / "state.json").read_text())
    val = meta["train"].get("last_val")
    return {"checkpoint": path.name, "step": meta["step"],
            "val": {k: val[k] for k in ("step", "accuracy", "loss") if k in val} if val else None}


def checkpoint_index(root: Path) -> list[dict[str, Any]]:
    """The kept checkpoints, oldest first: [{"checkpoint": "step-N", "step": N, "val": {step, accuracy, loss}}]."""
    path = root / INDEX
    return json.loads(path.read_text()) if path.exists() else []


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler and this rank's RNG; returns the saved train state (with 'step')."""
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(path / "state.safetensors")
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    params = dict(model.named_parameters())
    missing = set(weights) ^ {n for n, p in params.items() if p.requires_grad}
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model (differing parameters: {sorted(missing)[:5]}); "
                         "was the config changed since it was written?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    rng_file = path / f"rng-{rank}.safetensors"
    if rng_file.exists():
        set_rng_state(load_file(rng_file), json.loads((path / f"rng-{rank}.json").read_text()))
    return {"step": meta["step"], **meta["train"]}
