"""GeoLoRA / GeoDoRA on top of peft (paper eq. 4-5, DESIGN.md section 2).

- GeoLoRA = FFA-LoRA: every node draws the down-projection A of a module from the SAME Gaussian stream,
  seeded by (federation seed, module name) through SHA-256, and freezes it. Only B is trained and averaged,
  so averaging is exact: mean_k(B_k) A = mean_k(B_k A).
- GeoDoRA adds peft's DoRA magnitude m (one entry per output row, initialised to ||W0||_row):
  W' = m * (W0 + B A) / ||W0 + B A||_row. DoRA is nonlinear in (B, m), so the server averages B (and m when
  ``magnitude = "averaged"``) first and merges once (:func:`merged_weight`).
- ``magnitude = "local"`` (default) keeps m on the node: it is a private domain statistic and never uploaded.

Parameter names used on the wire are the backbone's module paths (``encoder.layer.0.attention.self.query``)
with the suffix ``.lora_B`` or ``.magnitude``; they do not depend on peft's internal prefixes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geofed_secure.errors import ConfigError, MessageError
from geofed_secure.seeding import torch_generator

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer

MAGNITUDE_POLICIES = ("local", "averaged")
ADAPTER = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class GeoDoRAConfig:
    rank: int = 8
    target_modules: tuple[str, ...] = ("query", "value")
    use_dora: bool = True
    magnitude: str = "local"

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ConfigError("model.rank", f"must be a positive integer, got {self.rank!r}")
        if not self.target_modules:
            raise ConfigError("model.target_modules", "must name at least one linear layer of the backbone")
        if self.magnitude not in MAGNITUDE_POLICIES:
            raise ConfigError("model.magnitude", f"must be one of {MAGNITUDE_POLICIES}, got {self.magnitude!r}")

    @classmethod
    def from_section(cls, model: Any) -> GeoDoRAConfig:
        """From the ``[model]`` section of a run configuration."""
        return cls(rank=model.rank, target_modules=tuple(model.target_modules), use_dora=model.use_dora,
                   magnitude=model.magnitude)


def apply_geodora(backbone: nn.Module, config: GeoDoRAConfig, *, federation_seed: int) -> nn.Module:
    """Wrap ``backbone`` with GeoDoRA adapters; A is the shared frozen Gaussian, B starts at zero.

    Returns the peft model. Base weights and every A are frozen; B (and m with DoRA) are trainable.
    """
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.rank,  # scaling 1: W' = W0 + B A as in eq. 4
        lora_dropout=0.0,
        target_modules=list(config.target_modules),
        use_dora=config.use_dora,
        init_lora_weights=True,
        bias="none",
    )
    try:
        with warnings.catch_warnings():
            # peft reads model.is_gradient_checkpointing, which transformers 5 deprecates: not actionable for a user,
            # and it was printed on every run
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(backbone, lora_config)
    except ValueError as exc:  # peft: target modules not found
        raise ConfigError("model.target_modules", str(exc)) from exc
    for name, layer in lora_layers(model):
        weight_a = _adapter_weight(layer.lora_A)
        gen = torch_generator(federation_seed, "geolora-A", name)
        # Gaussian with variance 1/in_features: A x keeps the scale of x (FFA-LoRA uses a Gaussian A).
        shared_a = torch.randn(weight_a.shape, generator=gen, dtype=torch.float32) / math.sqrt(weight_a.shape[1])
        with torch.no_grad():
            weight_a.copy_(shared_a.to(weight_a.dtype))
            _adapter_weight(layer.lora_B).zero_()
        weight_a.requires_grad_(False)
        if config.use_dora:
            # Re-initialise m from W0 now that A changed (B = 0, so ||W0 + BA|| = ||W0||).
            _adapter_weight(layer.lora_magnitude_vector).data = torch.linalg.norm(
                _base_weight(layer).detach(), dim=1
            ).to(weight_a.dtype)
    if not any(True for _ in lora_layers(model)):
        raise ConfigError("model.target_modules", f"no layer of the backbone matches {config.target_modules}")
    return model


def _module_path(peft_name: str) -> str:
    return peft_name.removeprefix("base_model.model.")


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(backbone module path, peft LoRA layer) for every adapted linear layer, in a stable order."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            yield _module_path(name), module


def _adapter_weight(table: nn.ModuleDict) -> nn.Parameter:
    """The default adapter's weight in one of a LoRA layer's tables: A or B (``nn.Linear``), or DoRA's magnitude m."""
    return table[ADAPTER].get_parameter("weight")


def _base_weight(layer: LoraLayer) -> nn.Parameter:
    """W0, the frozen weight of the linear layer that ``layer`` adapts."""
    return layer.get_base_layer().get_parameter("weight")


def magnitude_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [_adapter_weight(layer.lora_magnitude_vector) for _, layer in lora_layers(model) if _has_dora(layer)]


def _has_dora(layer: LoraLayer) -> bool:
    return ADAPTER in layer.lora_magnitude_vector


def get_lora_b(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.lora_B": _adapter_weight(layer.lora_B).detach().clone() for name, layer in lora_layers(model)}


def get_magnitudes(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.magnitude": _adapter_weight(layer.lora_magnitude_vector).detach().clone()
        for name, layer in lora_layers(model)
        if _has_dora(layer)
    }


def get_lora_a(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.lora_A": _adapter_weight(layer.lora_A).detach().clone() for name, layer in lora_layers(model)}


def load_shared_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``.lora_B`` / ``.magnitude`` entries of ``state`` into the model; unknown keys or shapes -> MessageError."""
    params: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model):
        params[f"{name}.lora_B"] = _adapter_weight(layer.lora_B)
        if _has_dora(layer):
            params[f"{name}.magnitude"] = _adapter_weight(layer.lora_magnitude_vector)
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise MessageError(f"shared state names unknown parameters {unknown[:3]}; the backbone/target_modules differ")
    with torch.no_grad():
        for key, value in state.items():
            target = params[key]
            value = torch.as_tensor(value)
            if tuple(value.shape) != tuple(target.shape):
                raise MessageError(f"shared state '{key}' has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            if not torch.isfinite(value).all():
                raise MessageError(f"shared state '{key}' contains NaN or inf")
            target.copy_(value.to(target.dtype))


def merged_weight(w0: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, magnitude: torch.Tensor | None) -> torch.Tensor:
    """Eq. 5 on one layer: m * (W0 + B A) / ||W0 + B A||_row (or W0 + B A without DoRA)."""
    direction = w0 + lora_b @ lora_a
    if magnitude is None:
        return direction
    return magnitude.unsqueeze(1) * direction / torch.linalg.norm(direction, dim=1, keepdim=True)


def merged_state(model: nn.Module, magnitudes: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The merged weight of every adapted layer (``<module>.weight``) for the model's current (B, m).

    ``magnitudes`` overrides the model's own m (e.g. the averaged m); merging happens once, after averaging.
    """
    out = {}
    for name, layer in lora_layers(model):
        mag = None
        if _has_dora(layer):
            mag = (magnitudes or {}).get(f"{name}.magnitude", _adapter_weight(layer.lora_magnitude_vector))
            mag = mag.detach()
        out[f"{name}.weight"] = merged_weight(
            _base_weight(layer).detach(),
            _adapter_weight(layer.lora_A).detach(),
            _adapter_weight(layer.lora_B).detach(),
            mag,
        )
    return out
