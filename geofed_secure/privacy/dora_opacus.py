"""Per-sample gradients of GeoDoRA under Opacus, without forking peft or Opacus (DESIGN.md section 7).

Stock peft 0.21 DoRA fails under Opacus for two reasons, both fixed here:

1. ``DoraLinearLayer.get_lora_weight`` computes ``B A`` as ``lora_B(lora_A(eye(in)))``: an extra call of the
   ``lora_B`` module whose forward hook records an "activation" with batch size ``in_features``, so the per-sample
   hooks of ``lora_B`` see two forward calls and one backward. :class:`OpacusDoraLinearLayer` computes
   ``lora_B.weight @ lora_A.weight`` directly (the value is used only detached, for the row norm).
2. Opacus has no grad sampler for the DoRA magnitude ``m``. peft's DoRA output is
   ``(m / ||W||_row - 1) * W0 x + (m / ||W||_row) * s B A x`` with the row norm detached (DoRA paper, section 4.3),
   so ``d out / d m = (W0 x + s B A x) / ||W||_row``: the per-sample gradient is the einsum of the backprops with
   that normalised output, summed over the token positions (:func:`compute_dora_magnitude_grad_sample`).

:func:`prepare_geodora_for_opacus` swaps every DoRA layer of a peft model to :class:`OpacusDoraLinearLayer` in
place (same parameters, same state-dict keys, same forward values); ``tests/privacy/test_privacy.py`` checks that the
per-sample gradients of every trainable tensor equal an explicit per-sample loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.dora import DoraLinearLayer
from torch import nn

from geofed_secure.errors import ConfigError

_PARENT = "_geofed_lora_parent"  # stored in __dict__, so nn.Module does not register the parent as a child (no cycle)
_ADAPTER = "_geofed_adapter"


class OpacusDoraLinearLayer(DoraLinearLayer):
    """peft's DoRA magnitude layer with ``B A`` computed from the weights (no extra ``lora_B`` call)."""

    def get_lora_weight(self, lora_A: nn.Module, lora_B: nn.Module, adapter_name: str | None = None) -> torch.Tensor:
        return lora_B.get_parameter("weight") @ lora_A.get_parameter("weight")


def prepare_geodora_for_opacus(model: nn.Module) -> int:
    """Make every DoRA layer of ``model`` Opacus-compatible in place; returns how many layers were prepared.

    Idempotent. Raises :class:`ConfigError` for layer kinds this module does not cover (transposed weights,
    dropout on the adapter input), which would make the magnitude grad sampler wrong.
    """
    count = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter, dora in module.lora_magnitude_vector.items():
            if not isinstance(dora, DoraLinearLayer) or type(dora) not in (DoraLinearLayer, OpacusDoraLinearLayer):
                raise ConfigError("model.use_dora", f"DP-SGD supports peft DoRA on Linear layers only, found {type(dora).__name__}")
            if dora.fan_in_fan_out:
                raise ConfigError("model.target_modules", "DP-SGD with DoRA needs nn.Linear layers (fan_in_fan_out = False)")
            if not isinstance(module.lora_dropout[adapter], nn.Identity):
                raise ConfigError("model", "DP-SGD with DoRA needs lora_dropout = 0 (the magnitude grad sampler assumes no dropout)")
            dora.__class__ = OpacusDoraLinearLayer
            dora.__dict__[_PARENT] = module
            dora.__dict__[_ADAPTER] = adapter
            count += 1
    return count


@register_grad_sampler(OpacusDoraLinearLayer)
def compute_dora_magnitude_grad_sample(
    layer: OpacusDoraLinearLayer, activations: Sequence[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient of the DoRA magnitude: ``sum_tokens backprops * (W0 x + s B A x) / ||W0 + s B A||_row``."""
    parent = layer.__dict__[_PARENT]
    adapter = layer.__dict__[_ADAPTER]
    x = activations[0].to(backprops.dtype)
    with torch.no_grad():
        w0 = parent.get_base_layer().weight.to(backprops.dtype)
        lora_a = parent.lora_A[adapter].weight.to(backprops.dtype)
        lora_b = parent.lora_B[adapter].weight.to(backprops.dtype)
        scaling = parent.scaling[adapter]
        row_norm = torch.linalg.norm(w0 + scaling * (lora_b @ lora_a), dim=1)
        normalised = (F.linear(x, w0) + scaling * F.linear(F.linear(x, lora_a), lora_b)) / row_norm
    return {layer.weight: torch.einsum("n...d,n...d->nd", backprops, normalised)}
