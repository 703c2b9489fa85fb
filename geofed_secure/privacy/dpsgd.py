"""DP-SGD for one node's local round: Opacus per-sample gradients (hooks mode), clipping, noise, accounting.

Used by :class:`geofed_secure.node.Node` when ``privacy.epsilon > 0``. Per optimizer step:

1. the PRIVATE task loss of a Poisson batch (one value per record) is back-propagated with Opacus's hooks on, for
   every trainable tensor (modality adapter, head, GeoDoRA B, DoRA magnitude m). ``grad_sample_mode = "ghost"``
   (default): Opacus's ghost clipping, a first backward pass computing per-sample gradient NORMS and a second one
   computing the gradient of the norm-weighted loss, i.e. the sum of clipped per-sample gradients; ``"hooks"``:
   per-sample gradients are materialised and the optimizer clips them;
2. :meth:`DPSGDRound.hooks_off` runs the PUBLIC anchor (CKA) pass with the hooks off, and the node takes its plain
   gradient by ``torch.autograd.grad``: it never reaches Opacus, so it is neither clipped nor noised;
3. :meth:`DPSGDRound.step`: Opacus's ``pre_step`` clips (hooks mode), sums, adds N(0, (sigma C)^2), scales by the
   expected batch size and calls the privacy ledger's step hook (exactly one recorded step); then the public gradient
   is added and the wrapped optimizer (Adam) steps.

Adding the public gradient after the noise is sound: it depends only on public anchors and on parameters that are
already the output of DP steps, so it is post-processing (DESIGN.md section 7). An empty Poisson batch still takes a
step (noise only), as the accounting assumes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn

from geofed_secure.config import GRAD_SAMPLE_MODES
from geofed_secure.errors import ConfigError, TrainingError
from geofed_secure.privacy.dora_opacus import prepare_geodora_for_opacus
from geofed_secure.privacy.noise import DPRandomness


@contextlib.contextmanager
def _quiet_hooks() -> Iterator[None]:
    # The adapter's input (frozen encoder tokens) needs no gradient; torch warns about that for every full hook.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


class DPSGDRound(contextlib.AbstractContextManager):
    """Opacus around ``model`` and ``optimizer`` for one local round; hooks are removed on exit."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, noise_multiplier: float,
                 max_grad_norm: float, expected_batch_size: float, step_hook: Callable[[DPOptimizer], None],
                 randomness: DPRandomness, purpose: Sequence[object], grad_sample_mode: str = "ghost",
                 audit: Callable[[Sequence[nn.Parameter], float], None] | None = None) -> None:
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError("privacy.grad_sample_mode", f"must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}")
        self.model = model
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.randomness = randomness
        self.ghost = grad_sample_mode == "ghost"
        self._purpose, self._steps = tuple(purpose), 0
        # An auditor's hook (audit/gradient_canaries.py): called after clipping + noise with the parameters and the
        # 1 / expected-batch scale, before the public gradient; it may add canary gradients and read what it observes.
        self.audit, self.scale = audit, 1.0 / expected_batch_size
        prepare_geodora_for_opacus(model)
        # Opacus divides the noisy sum by expected_batch_size (an int there); Poisson sampling keeps it as a float.
        dp_args = {"noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm,
                   "expected_batch_size": expected_batch_size, "loss_reduction": "mean",
                   "secure_mode": randomness.robust_sampler}
        if self.ghost:
            self.module = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean", strict=True,
                                                               max_grad_norm=max_grad_norm, use_ghost_clipping=True)
            self.optimizer = DPOptimizerFastGradientClipping(optimizer, **dp_args)
        else:
            self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
            self.optimizer = DPOptimizer(optimizer, **dp_args)
        self.optimizer.attach_step_hook(step_hook)

    def __exit__(self, *exc: object) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.module.cleanup()  # remove hooks and grad_sample attributes: the model is plain again (merge, export)

    def private_backward(self, per_sample_loss: torch.Tensor) -> None:
        """Back-propagate the private loss (one value per record) of a non-empty batch.

        hooks: one backward fills per-sample gradients, which the optimizer clips. ghost: Opacus's two passes, the
        first computing per-sample gradient NORMS only, the second the gradient of the norm-weighted loss.
        """
        with _quiet_hooks():
            if self.ghost:
                DPTensorFastGradientClipping(self.module, self.optimizer, per_sample_loss, "mean").backward()
            else:
                per_sample_loss.mean().backward()

    def empty_batch(self) -> None:
        """A Poisson batch with no sample: a zero clipped sum, so the step adds noise only."""
        for p in self.params:
            if self.ghost:
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)

    @contextlib.contextmanager
    def hooks_off(self) -> Iterator[None]:
        """For passes over PUBLIC data: no activations or backprops are captured."""
        self.module.disable_hooks()
        try:
            with _quiet_hooks():
                yield
        finally:
            self.module.enable_hooks()

    def step(self, public_gradients: Mapping[int, torch.Tensor]) -> None:
        """Clip + noise + account the private gradients, add the public ones (by ``id(param)``), step."""
        self._steps += 1
        self.optimizer.generator = self.randomness.noise_generator(*self._purpose, self._steps)
        if not self.optimizer.pre_step():  # never skipped here: no gradient accumulation across calls
            raise TrainingError("DP optimizer skipped a step (gradient accumulation is not used by geofed)")
        if self.audit is not None:
            self.audit(self.params, self.scale)
        for p in self.params:
            if id(p) in public_gradients:
                p.grad = p.grad + public_gradients[id(p)]
        if not all(torch.isfinite(p.grad).all() for p in self.params if p.grad is not None):
            raise TrainingError("non-finite gradient after DP noise; lower training.lr or check the data")
        self.optimizer.original_optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
