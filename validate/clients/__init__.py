"""The real clients apps load the files with, run in their own environments (scripts/setup_clients.sh): a file is
only done when they accept it and answer as our runtime does."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from mobile_vision_export.errors import UserError

CLIENTS = ("mediapipe", "task_library")
_HERE = Path(__file__).resolve().parent
_SCRIPTS = {"mediapipe": _HERE / "mediapipe_tasks.py", "task_library": _HERE / "task_library.py"}
CLIENT_TASKS = ("classify", "segment", "embed", "detect")


class ClientError(UserError, RuntimeError):
    """A client that is not set up, or that refuses the file."""


def clients_dir() -> Path:
    return Path(os.environ.get("MVE_CLIENTS", Path.home() / ".cache" / "mobile-vision-export" / "clients"))


def client_python(client: str) -> Path:
    python = clients_dir() / client / "bin" / "python"
    if not python.is_file():
        raise ClientError(f"the {client} client is not set up in {python.parent.parent}: run scripts/setup_clients.sh")
    return python


def client_version(client: str) -> str:
    """What scripts/setup_clients.sh installed for `client` (e.g. "mediapipe==1.2.3"), for the reports."""
    return (client_python(client).parent.parent / ".installed").read_text().strip()


def answers(client: str, task: str, model: Path, crops_uint8: np.ndarray) -> np.ndarray:
    """What `client` answers for each crop (NHWC uint8, already resized and cropped as the contract says): classify,
    the top-1 class; segment, the category mask (N x H x W, at the crop's size); embed, the embedding (N x D);
    detect, the best detection (N x 6: x, y, width, height in pixels, category index, score)."""
    if task not in CLIENT_TASKS:
        raise ClientError(f"{client} is run here for {', '.join(CLIENT_TASKS)}, not {task}")
    python = client_python(client)
    with tempfile.TemporaryDirectory(prefix="mve-client-") as tmp:
        crops, result = Path(tmp) / "crops.npy", Path(tmp) / "answers.npy"
        np.save(crops, np.ascontiguousarray(crops_uint8, np.uint8))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(
            [str(python), str(_SCRIPTS[client]), task, str(model.resolve()), str(crops), str(result)],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise ClientError(f"{client} failed on {model.name}: {proc.stderr.strip()[-400:]}")
        answer = json.loads(lines[-1])
        if "error" in answer:
            raise ClientError(f"{client} refuses {model.name}: {answer['error']}")
        return np.load(result)
