"""Weight averaging: an exponential moving average (EMA) of the weights during training, and the plain
average of the last N checkpoints at export time.

Both operate on the JustModel's own state dict (keys without the LightningModule's ``model.``
prefix). Floating-point tensors are averaged in float32; integer buffers (counters) are copied from
the newest source.

Example::

    >>> import torch
    >>> a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(1)}
    >>> b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(2)}
    >>> average_state_dicts([a, b])["w"].tolist()
    [2.0, 4.0]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

#: prefix of the JustModel's parameters inside a LightningModule's state dict
MODULE_PREFIX = "model."
#: extra top-level key our EMA callback writes into Lightning checkpoints
EMA_CHECKPOINT_KEY = "ema_state_dict"


def strip_prefix(state: Mapping[str, Tensor], prefix: str = MODULE_PREFIX) -> dict[str, Tensor]:
    """Keep the entries under ``prefix`` and drop the prefix (a Lightning state dict -> the model's).

    A state dict with no key under ``prefix`` is returned unchanged (it already is the model's)."""
    if not any(k.startswith(prefix) for k in state):
        return dict(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_lightning_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint safely (``weights_only=True``: tensors and plain containers only).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or not a
    Lightning checkpoint."""
    from just_asr.train.checkpointing import safe_torch_load

    path = Path(path)
    ckpt = safe_torch_load(path)  # errors name the file and say what is wrong, in one line
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def average_state_dicts(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Element-wise mean of ``states`` (all with the same keys and shapes).

    Floating tensors are averaged in float32 and cast back to their dtype; other tensors (integer
    counters) are taken from the last state. Raises ``ValueError`` on mismatched keys or shapes."""
    if not states:
        raise ValueError("average_state_dicts needs at least one state dict")
    keys = list(states[-1].keys())
    for i, s in enumerate(states):
        if set(s.keys()) != set(keys):
            diff = sorted(set(s.keys()) ^ set(keys))[:5]
            raise ValueError(f"state dict #{i} has different keys from the last one (e.g. {diff})")
    out: dict[str, Tensor] = {}
    for k in keys:
        ref = states[-1][k]
        if not torch.is_floating_point(ref):
            out[k] = ref.clone()
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float32)
        for i, s in enumerate(states):
            if s[k].shape != ref.shape:
                raise ValueError(f"state dict #{i}: {k} has shape {tuple(s[k].shape)}, expected {tuple(ref.shape)}")
            acc += s[k].detach().to("cpu", torch.float32)
        out[k] = (acc / len(states)).to(ref.dtype)
    return out


_STEP_RE = re.compile(r"step[=_-]?(\d+)")


def checkpoint_step(path: str | Path) -> int:
    """The global step a checkpoint was written at (read from the file)."""
    ckpt = load_lightning_checkpoint(path)
    return int(ckpt.get("global_step", -1))


def find_last_checkpoints(ckpt: str | Path, n: int) -> list[Path]:
    """The ``n`` checkpoints with the highest global step among ``ckpt``'s folder (``ckpt`` may be a
    checkpoint file or a folder), oldest first. Files with the same step (``last.ckpt`` next to the
    periodic one it duplicates) count once.

    Raises ``ValueError`` when fewer than ``n`` distinct steps are available."""
    if n < 1:
        raise ValueError(f"--average-last needs N >= 1, got {n}")
    p = Path(ckpt)
    if not p.exists():  # (its parent folder would otherwise be searched: another run's checkpoints)
        raise FileNotFoundError(f"{p}: checkpoint or checkpoint folder not found")
    folder = p if p.is_dir() else p.parent
    files = sorted(folder.glob("*.ckpt")) + sorted(folder.glob("*/*.ckpt"))
    if not files:
        raise ValueError(f"{folder}: no *.ckpt files to average")
    by_step: dict[int, Path] = {}
    for f in files:
        step = checkpoint_step(f)
        # prefer a periodic 'step...' file over last.ckpt / best files for the same step
        if step not in by_step or _STEP_RE.search(f.name):
            by_step[step] = f
    steps = sorted(by_step)
    if len(steps) < n:
        raise ValueError(
            f"{folder}: only {len(steps)} checkpoint(s) with distinct steps ({steps}); cannot average the last {n}"
        )
    return [by_step[s] for s in steps[-n:]]


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Tensor]:
    """The JustModel state dict averaged over the Lightning checkpoints ``paths``."""
    return average_state_dicts([strip_prefix(load_lightning_checkpoint(p)["state_dict"]) for p in paths])


class EMAWeights:
    """Exponential moving average of a module's floating-point state:
    ``shadow <- decay * shadow + (1 - decay) * current`` after each optimiser step.

    ``warmup`` (default on) uses ``min(decay, (1 + n) / (10 + n))`` for the n-th update so that early
    averages are not dominated by the random initialisation. Shadows are kept in float32 on the
    module's device; integer buffers are copied.

    Args:
        module: the module to track (its ``state_dict()`` keys name the shadows).
        decay: the long-run decay, e.g. 0.999.
        warmup: ramp the decay up as described above.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            k: (v.detach().clone().float() if torch.is_floating_point(v) else v.detach().clone())
            for k, v in module.state_dict().items()
        }

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold ``module``'s current weights into the average."""
        d = self.current_decay()
        shadows, currents = [], []
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if torch.is_floating_point(v):
                if s.device != v.device:
                    s = self.shadow[k] = s.to(v.device)
                shadows.append(s)
                currents.append(v.detach().float())
            else:
                s.copy_(v)
        if shadows:  # s += (1 - d) (v - s), i.e. s = d s + (1 - d) v, in one multi-tensor op
            torch._foreach_lerp_(shadows, currents, 1.0 - d)
        self.num_updates += 1

    def state_dict_for(self, module: nn.Module) -> dict[str, Tensor]:
        """The shadow weights cast to ``module``'s dtypes, on CPU, ready for ``load_state_dict``."""
        ref = module.state_dict()
        return {k: self.shadow[k].detach().to("cpu", ref[k].dtype).clone() for k in ref}

    def state_dict(self, with_shadow: bool = True) -> dict:
        """Decay, warm-up flag, update count and (``with_shadow``) the shadow weights, on CPU."""
        state = {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}
        if with_shadow:
            state["shadow"] = {k: v.detach().cpu() for k, v in self.shadow.items()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        loaded = state["shadow"]
        missing = set(self.shadow) - set(loaded)
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        for k in self.shadow:
            self.shadow[k] = loaded[k].to(self.shadow[k].device).clone()
