"""Weight averaging for :func:`transfuse.train.fit`: ``train.ema`` and ``train.swa``.

The averaging itself is the libraries': ``train.ema`` is timm's
:class:`~timm.utils.model_ema.ModelEmaV3` (every floating-point tensor of the ``state_dict`` —
parameters and BatchNorm running statistics — moves towards the model's by ``1 - decay`` after
each optimiser step; its first update, at step 1, copies the weights), and ``train.swa`` is
:class:`torch.optim.swa_utils.AveragedModel` (an equal-weight average of the weights after every
step from the start step on) whose BatchNorm statistics
:func:`torch.optim.swa_utils.update_bn` recomputes on the training set before each evaluation.

``fit()`` sees a small interface, the same with averaging off:

- :meth:`Averaging.update` after each optimiser step;
- :meth:`Averaging.evaluated` at an evaluation: the module to run (predictions) and the module
  whose ``state_dict`` is the checkpoint (``best.pt``, ``last.pt``): the averaged weights when
  averaging is on (for SWA from its start step), else the model itself;
- :meth:`Averaging.state_dict` / :meth:`Averaging.load_state_dict`: the averaged weights in
  ``resume.pt``, so a killed and resumed run gives the same result.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainSpec
from ..errors import ConfigError

__all__ = ["Averaging", "make_averaging"]


class Averaging:
    """No averaging: evaluations and checkpoints use the model being trained.

    Args:
        model: the module that runs (possibly wrapped by DDP or ``torch.compile``).
        raw_model: the unwrapped model (its ``state_dict`` keys are the checkpoints').
    """

    kind = "none"

    def __init__(self, *, model: nn.Module, raw_model: nn.Module) -> None:
        self.model, self.raw_model = model, raw_model

    def update(self, step: int) -> None:
        """Fold the weights after optimiser step ``step`` (1-based) into the average."""

    def evaluated(self, step: int) -> tuple[nn.Module, nn.Module]:
        """``(module to evaluate, module whose state_dict is the checkpoint)`` after ``step``."""
        return self.model, self.raw_model

    def state_dict(self) -> dict[str, Any] | None:
        """The averaged state for ``resume.pt`` (``None``: nothing to keep)."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` from ``resume.pt``.

        Raises:
            ConfigError: the checkpoint holds no averaged state although averaging is on.
        """


class _Ema(Averaging):
    kind = "ema"

    def __init__(self, *, model: nn.Module, raw_model: nn.Module, decay: float) -> None:
        from timm.utils.model_ema import ModelEmaV3

        super().__init__(model=model, raw_model=raw_model)
        # timm's defaults otherwise: no warm-up, the first update (step 1) copies the weights
        self.ema = ModelEmaV3(raw_model, decay=decay)

    def update(self, step: int) -> None:
        self.ema.update(self.raw_model, step=step)

    def evaluated(self, step: int) -> tuple[nn.Module, nn.Module]:
        return self.ema.module, self.ema.module

    def state_dict(self) -> dict[str, Any] | None:
        return {"kind": self.kind, "module": self.ema.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.ema.module.load_state_dict(_checked(state, self.kind)["module"])


class _Swa(Averaging):
    kind = "swa"

    def __init__(self, *, model: nn.Module, raw_model: nn.Module, start: int,
                 bn_loader: DataLoader, device: torch.device) -> None:
        from torch.optim.swa_utils import AveragedModel

        super().__init__(model=model, raw_model=raw_model)
        self.start, self.bn_loader, self.device = start, bn_loader, device
        self.swa = AveragedModel(raw_model)
        self._bn_step: int | None = None  # the step whose average the BN statistics are of

    def update(self, step: int) -> None:
        if step >= self.start:
            self.swa.update_parameters(self.raw_model)
            self._bn_step = None

    def evaluated(self, step: int) -> tuple[nn.Module, nn.Module]:
        if step < self.start or int(self.swa.n_averaged) == 0:
            return self.model, self.raw_model
        if self._bn_step != step:
            from torch.optim.swa_utils import update_bn

            # the global RNG is left as it was: the training stream after this is unchanged
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                update_bn(self.bn_loader, self.swa.module, device=self.device)
            self._bn_step = step
        return self.swa.module, self.swa.module

    def state_dict(self) -> dict[str, Any] | None:
        return {"kind": self.kind, "averaged": self.swa.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.swa.load_state_dict(_checked(state, self.kind)["averaged"])
        self._bn_step = None


def _checked(state: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    if not state or state.get("kind") != kind:
        raise ConfigError(f"resume.pt holds no train.{kind} state; delete it to restart the run")
    return state


def make_averaging(spec: TrainSpec, *, model: nn.Module, raw_model: nn.Module, total: int,
                   bn_data: Any, batch_size: int, device: torch.device) -> Averaging:
    """The averaging ``spec`` asks for (``train.ema``, ``train.swa`` or none).

    Args:
        model: the module that runs (possibly wrapped); evaluated when averaging is off.
        raw_model: the unwrapped model, after its init (the average starts from it).
        total: the run's optimiser steps.
        bn_data: the training split, read in order by ``update_bn`` (SWA only).
        batch_size: ``update_bn``'s batch size.

    Raises:
        ConfigError: ``train.swa`` after the last step (a run sized in epochs).
    """
    if spec.ema is not None:
        return _Ema(model=model, raw_model=raw_model, decay=spec.ema)
    if spec.swa is not None:
        if spec.swa > total:
            raise ConfigError(f"train.swa={spec.swa} starts after the last step ({total}); give "
                              f"a step <= {total}")
        loader = DataLoader(bn_data, batch_size=batch_size, shuffle=False)
        return _Swa(model=model, raw_model=raw_model, start=spec.swa, bn_loader=loader,
                    device=device)
    return Averaging(model=model, raw_model=raw_model)
