"""Training glue shared by every method: seeding, a timed loop with progress bar, resumable state.

Methods keep their nn.Modules free of this; ``anomaly.train`` (the CLI) calls each
method's ``fit`` and then calibrates and writes the card.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm


# the --init-from checkpoints whose weights a TrainLoop of this process started networks from:
# ``anomaly.train`` checks after ``fit`` that the checkpoint it was given was used
INIT_USED: set[str] = set()


@dataclass
class TrainConfig:
    seed: int = 0
    minutes: float = 20.0  # wall-time budget
    max_steps: int = 100_000
    batch_size: int = 32
    lr: float = 1e-3
    resume: bool = False
    device: str = "cpu"  # "cpu", "cuda" or "auto" (CUDA when available); see resolve_device
    save_every_s: float = 120.0
    augment: bool = True
    data_dir: str | None = None  # the data-set root (set by anomaly.train; DDAD reads DIR/unlabeled)
    init_from: str | None = None  # a checkpoint folder whose weights start the networks (fine-tuning)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str | None) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" without a GPU is an error."""
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        from anomaly.errors import InvalidRequestError

        raise InvalidRequestError(f"--device {name}: no CUDA GPU is visible to torch here; use cpu or auto")
    return name


def device_label(device: str) -> str:
    """A human description of where training ran, for model cards."""
    import platform

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} GPU (torch {torch.__version__})"
    n = torch.get_num_threads()
    return f"{platform.machine()} CPU, {n} torch thread{'s' if n != 1 else ''} (torch {torch.__version__})"


def _say(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


@contextlib.contextmanager
def _stop_requests():
    """While a training loop runs: Ctrl-C or SIGTERM is noted (a list that holds the signal's name)
    instead of killing the process mid-step, so that the loop saves its state after the step in
    progress and stops. Main thread only (elsewhere signals cannot be caught); handlers restored."""
    stop: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def note(signum, _frame):
        stop.append(signal.Signals(signum).name)

    old = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def set_threads() -> None:
    n = int(os.environ.get("ANOMALY_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(max(1, n))


def batches(images: np.ndarray, masks: np.ndarray, batch_size: int, rng: np.random.Generator, augment: bool = True,
            device: str = "cpu"):
    """Endless random mini-batches (B,1,S,S) images and masks on ``device``, with light flips/gain."""
    n = len(images)
    while True:
        idx = rng.permutation(n)
        for s in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            b = idx[s : s + batch_size]
            x = images[b][:, None].copy()
            m = masks[b][:, None].copy()
            if augment:
                flip = rng.random(len(b)) < 0.5
                x[flip] = x[flip][..., ::-1]
                m[flip] = m[flip][..., ::-1]
                g = rng.uniform(0.9, 1.1, size=(len(b), 1, 1, 1)).astype(np.float32)
                x = np.clip(x * g, 0, 1.5)
            xt, mt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(m))
            yield (xt, mt) if device == "cpu" else (xt.to(device), mt.to(device))


def matching_prefix(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str | None:
    """The key prefix under which ``saved`` holds every tensor of ``own`` with the same shapes, or None."""
    if not own:
        return ""
    k0 = next(iter(own))
    for key in saved:
        if key.endswith(k0):
            pre = key[: len(key) - len(k0)]
            if all(pre + k in saved and saved[pre + k].shape == v.shape for k, v in own.items()):
                return pre
    return None


class TrainLoop:
    """A timed, resumable loop: ``for step in loop: ...; loop.log(loss=...)``.

    Saves ``state.safetensors`` (model + optimiser tensors flattened) in ``work_dir``
    every ``save_every_s`` and at the end; with ``resume`` it continues from it. Modules are
    moved to ``cfg.device`` first (parameters keep their identity, so optimisers made
    before stay valid), then the state is loaded onto them.
    """

    def __init__(self, cfg: TrainConfig, work_dir: Path, modules: dict[str, torch.nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], desc: str = "train"):
        self.cfg, self.work_dir, self.modules, self.optimizers = cfg, Path(work_dir), modules, optimizers
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.step = 0
        self.elapsed_before = 0.0
        self.history: list[dict] = []
        self.desc = desc
        for m in modules.values():
            m.to(cfg.device)
        if cfg.resume:
            self._load()
        if cfg.init_from and self.step == 0:
            self._init_weights(Path(cfg.init_from))

    @property
    def state_path(self) -> Path:
        return self.work_dir / "state.safetensors"

    def _flat(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, m in self.modules.items():
            for k, v in m.state_dict().items():
                out[f"model.{name}.{k}"] = v
        for name, o in self.optimizers.items():
            sd = o.state_dict()
            for pid, st in sd["state"].items():
                for k, v in st.items():
                    t = v if torch.is_tensor(v) else torch.tensor(v)
                    out[f"optim.{name}.{pid}.{k}"] = t.reshape(-1) if t.ndim == 0 else t
        out["meta.step"] = torch.tensor([self.step])
        out["meta.elapsed"] = torch.tensor([self.elapsed_before + self._run_time()], dtype=torch.float64)
        return out

    def _run_time(self) -> float:
        end = getattr(self, "_t_end", None) or time.perf_counter()  # frozen when the loop ends
        return end - getattr(self, "_t0", end)

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in self._flat().items()}, str(tmp))
        tmp.replace(self.state_path)

    def _init_weights(self, ckpt_dir: Path) -> None:
        """Start each network from the weights of a saved checkpoint (``--init-from``); optimisers start fresh."""
        from anomaly.checkpoints import load_weights
        from anomaly.errors import CheckpointError

        saved = load_weights(ckpt_dir)  # checked against its card's hash
        for name, m in self.modules.items():
            own = m.state_dict()
            prefix = matching_prefix(own, saved)
            if prefix is None:
                raise CheckpointError(f"--init-from {ckpt_dir}: its weights do not fit this method's network "
                                      f"'{name}' (another method or architecture)")
            m.load_state_dict({k: saved[prefix + k] for k in own})
        INIT_USED.add(str(ckpt_dir.resolve()))
        _say(f"{self.desc}: starting from the weights in {ckpt_dir}")

    def _load(self) -> None:
        if not self.state_path.exists():
            _say(f"{self.desc}: --resume: no saved state in {self.work_dir}, starting from step 0")
            return
        flat = load_file(str(self.state_path))
        try:
            for name, m in self.modules.items():
                pre = f"model.{name}."
                m.load_state_dict({k[len(pre):]: v for k, v in flat.items() if k.startswith(pre)})
        except (RuntimeError, KeyError) as e:
            from anomaly.errors import CheckpointError

            raise CheckpointError(f"the saved state in {self.work_dir} is not that of this model (another method or "
                                  f"architecture: {str(e).splitlines()[0][:120]}); train without --resume or give "
                                  "another --out") from None
        for name, o in self.optimizers.items():
            sd = o.state_dict()
            pre = f"optim.{name}."
            for pid in list(sd["state"].keys()) or [p for g in sd["param_groups"] for p in g["params"]]:
                st = {}
                for k, v in flat.items():
                    if k.startswith(f"{pre}{pid}."):
                        key = k[len(f"{pre}{pid}.") :]
                        st[key] = v.reshape(()) if key == "step" else v.to(self.cfg.device)
                if st:
                    sd["state"][pid] = st
            o.load_state_dict(sd)
        self.step = int(flat["meta.step"][0])
        self.elapsed_before = float(flat["meta.elapsed"][0])
        _say(f"{self.desc}: resuming from step {self.step} ({self.elapsed_before / 60:.1f} min already trained)")
        if self.step >= self.cfg.max_steps:
            _say(f"{self.desc}: already at step {self.step}, not below --steps {self.cfg.max_steps}: nothing more "
                 "to train (raise --steps to go on)")
        elif self.elapsed_before >= self.cfg.minutes * 60:
            _say(f"{self.desc}: {self.elapsed_before / 60:.1f} min already trained, not below --minutes "
                 f"{self.cfg.minutes:g}: nothing more to train (raise --minutes to go on)")

    def __iter__(self):
        cfg = self.cfg
        self._t0, self._t_end = time.perf_counter(), None
        budget = cfg.minutes * 60 - self.elapsed_before
        last_save = time.perf_counter()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.desc, dynamic_ncols=True, mininterval=2)
        first = self.step
        with _stop_requests() as stop:
            while self.step < cfg.max_steps and self._run_time() < budget:
                yield self.step
                self.step += 1
                bar.update(1)
                if self.step % 10 == 0:
                    # a run ends at --steps or at the --minutes budget, whichever comes first: the bar's
                    # total is the steps this run will reach at its current pace (a 1-minute run does not
                    # read "0% of 100000")
                    t = self._run_time()
                    if t > 0:
                        reach = self.step + (self.step - first) / t * max(budget - t, 0.0)
                        bar.total = int(min(cfg.max_steps, max(reach, self.step + 1)))
                    if self.history:
                        bar.set_postfix({k: f"{v:.4f}" for k, v in self.history[-1].items() if k != "step"})
                if stop:
                    bar.close()
                    self.save()
                    from anomaly.errors import TrainingInterrupted

                    raise TrainingInterrupted(f"{self.desc} stopped ({stop[0]}) at step {self.step}; its state is "
                                              f"saved in {self.work_dir}: run the same command with --resume to continue")
                if time.perf_counter() - last_save > cfg.save_every_s:
                    self.save()
                    last_save = time.perf_counter()
        bar.total = self.step  # done: the bar ends full whichever limit ended it
        bar.refresh()
        bar.close()
        # the training time ends with the loop: the card's wall_time_s is the time the saved state holds,
        # so a resumed run's figure (saved + its own) never reads less than the run it resumed
        self._t_end = time.perf_counter()
        self.save()

    def log(self, **values: float) -> None:
        self.history.append({"step": self.step, **{k: float(v) for k, v in values.items()}})

    @property
    def wall_time_s(self) -> float:
        return self.elapsed_before + self._run_time()
