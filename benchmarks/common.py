"""Helpers every benchmark shares: the machine and versions a figure was measured on, and writing
benchmarks/results/<name>.json. Knows nothing of what is being measured."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PACKAGES = ("rmkit", "torch", "transformers", "trl", "accelerate", "peft", "datasets", "tokenizers", "fastapi",
            "uvicorn", "httpx")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each named distribution; absent ones are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """HEAD of the checkout, with '+dirty' when tracked files have changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    """Where and with what a benchmark ran: platform, CPU, cores, GPU, package versions, date (UTC), commit."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "versions": package_versions(),
        "git_commit": git_commit(),
    }
    try:
        import torch

        info["torch_threads_default"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_json(path: Path, value: Any, indent: int | None = 2) -> Path:
    """Write value as JSON to path atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=indent)
        f.write("\n")
    os.replace(tmp, path)
    return path


def write_result(name: str, figures: dict[str, Any], results_dir: Path = RESULTS) -> Path:
    """Write {"benchmark": name, "machine": machine_info(), **figures} to <results_dir>/<name>.json atomically."""
    return write_json(Path(results_dir) / f"{name}.json", {"benchmark": name, "machine": machine_info(), **figures})
