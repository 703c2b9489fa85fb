"""One node's model: local adapter W_m -> shared transformer (GeoDoRA) -> pooled z -> local task head.

The adapter and the head never leave the node. A bridge node (locally paired data of two modalities) has
a second adapter for its paired modality; both feed the same shared transformer.
"""

from __future__ import annotations

import torch
from torch import nn

from geofed_secure.model.backbone import hidden_size, masked_mean


class ModalityAdapter(nn.Module):
    """W_m: d_m -> d_model. A parameter-free LayerNorm first puts every encoder's tokens on one scale; then the mean
    normalised token of the PUBLIC anchors is subtracted (:meth:`centre_on`).

    Why the centring: frozen encoders are anisotropic (EfficientNet's features are mostly positive, so every token
    shares a large common direction). Adam's first steps move every weight by about ``lr`` in the sign of its
    gradient, which then adds nearly the same vector to every sample's input; measured on the demo (seed 0,
    clinic-images-a) ONE step took the anchor Gram scale from 0.135 to below 1e-6 (every embedding pointing the same
    way: the round-1 collapse of docs/alignment.md). Centred inputs: 0.13 -> 0.29 over the same 8 steps, lower task
    loss. The centre is computed from public anchors only (no private data, nothing to account for) and is not part
    of the checkpointed state: it is recomputed from the anchors whenever the node is built.
    """

    centre: torch.Tensor

    def __init__(self, in_dim: int, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, elementwise_affine=False)
        self.proj = nn.Linear(in_dim, d_model)
        self.register_buffer("centre", torch.zeros(in_dim), persistent=False)

    @torch.no_grad()
    def centre_on(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Set the centre to the masked mean of the normalised ``tokens`` [N, L, d_m] (the node's public anchors)."""
        weights = mask.to(tokens.dtype)[..., None]
        self.centre.copy_((self.norm(tokens) * weights).sum((0, 1)) / weights.sum().clamp_min(1.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(tokens) - self.centre)


class NodeModel(nn.Module):
    def __init__(self, peft_backbone: nn.Module, *, in_dim: int, n_classes: int, paired_in_dim: int | None = None) -> None:
        super().__init__()
        d_model = hidden_size(peft_backbone)
        self.backbone = peft_backbone
        self.adapter = ModalityAdapter(in_dim, d_model)
        self.paired_adapter = ModalityAdapter(paired_in_dim, d_model) if paired_in_dim else None
        self.head = nn.Linear(d_model, n_classes)

    def embed(self, tokens: torch.Tensor, mask: torch.Tensor, *, paired: bool = False) -> torch.Tensor:
        """Pool(f_theta(W_m phi(x))): [N, L, d_m] tokens + [N, L] mask -> [N, d_model]."""
        adapter = self.paired_adapter if paired else self.adapter
        if adapter is None:
            raise ValueError("this node has no paired modality")
        hidden = self.backbone(inputs_embeds=adapter(tokens), attention_mask=mask.long()).last_hidden_state
        return masked_mean(hidden, mask)

    def local_state(self) -> dict[str, torch.Tensor]:
        """Parameters that stay on the node (adapters, head), detached copies."""
        modules = {"adapter": self.adapter, "head": self.head, "paired_adapter": self.paired_adapter}
        return {
            f"{prefix}.{key}": value.detach().clone()
            for prefix, module in modules.items()
            if module is not None
            for key, value in module.state_dict().items()
        }

    def load_local_state(self, state: dict[str, torch.Tensor]) -> None:
        modules = {"adapter": self.adapter, "head": self.head, "paired_adapter": self.paired_adapter}
        for prefix, module in modules.items():
            if module is None:
                continue
            sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
            module.load_state_dict(sub)
