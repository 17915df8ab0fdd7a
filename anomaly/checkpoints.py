"""Checkpoints: safetensors weights + a JSON card per method (never pickles)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from anomaly.errors import CheckpointError
from anomaly.keys import checkpoint_hash

WEIGHTS = "model.safetensors"
CARD = "card.json"


def save_checkpoint(out_dir: Path, tensors: dict[str, torch.Tensor], card: dict) -> dict:
    """Write weights and card; the card gets the weights' hash. Returns the card."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(out_dir / WEIGHTS))
    _readable_as_umask_allows(out_dir / WEIGHTS)
    card = dict(card)
    card["checkpoint_hash"] = checkpoint_hash(out_dir / WEIGHTS)
    card["weights"] = WEIGHTS
    write_card(out_dir, card)
    return card


def _readable_as_umask_allows(path: Path) -> None:
    """safetensors writes its file owner-only (0600): an app run by another user could not read a model
    trained for it; give it the mode a plain file gets here (0666 less the umask, e.g. 0644)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_card(out_dir: Path, card: dict) -> None:
    tmp = Path(out_dir) / (CARD + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False, default=_jsonable))
    tmp.replace(Path(out_dir) / CARD)


def _jsonable(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def load_card(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / CARD
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"card {path} is not valid JSON: {e}") from e


def load_weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Load the safetensors weights, checking the hash recorded in the card."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / WEIGHTS
    if not path.exists():
        raise CheckpointError(f"no weights at {path}: train the method first (python -m anomaly.train ...)")
    card = load_card(ckpt_dir)
    if card.get("checkpoint_hash") and checkpoint_hash(path) != card["checkpoint_hash"]:
        raise CheckpointError(f"{path} does not match the hash in its card (file changed or corrupt)")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {e}") from e
