"""A federation node: local training with the task + geometric loss, and the upload it sends.

Transport-agnostic (STYLE.md, h11): :meth:`Node.handle_broadcast` takes a :class:`RoundBroadcast` and returns
a :class:`NodeUpdate`; drivers (the in-process simulator, later Flower) move the messages.

What this node reveals per round (plaintext transport): its B matrices multiplied by its precision weight,
its magnitude m times the weight only when ``magnitude = "averaged"``, the strict upper triangle of its centred
anchor Gram normalised to unit Frobenius norm (``H G H / ||H G H||_F``; the diagonal follows from the row sums), and
its precision weight p_k. Its data, encoder tokens, adapter W_m, head and (by default) m stay here.
With secure aggregation (a later protocol layer) the server sees only sums of these fields.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from geofed_secure.alignment.cka import cka_loss
from geofed_secure.alignment.geometry import (
    centred_gram_from_upper,
    effective_rank,
    gram_scale,
    normalised_centred_gram,
    scale_floor_penalty,
)
from geofed_secure.alignment.gram import cosine_gram, gram_upper
from geofed_secure.alignment.lap import centred_lap_uncertainty, precision_weight
from geofed_secure.config import NodeSpec, RunConfig
from geofed_secure.data.anchors import verify_anchor_digest
from geofed_secure.data.features import TokenFeatures
from geofed_secure.errors import CheckpointError, DataError, MessageError, TrainingError
from geofed_secure.model import geodora
from geofed_secure.model.node_model import NodeModel
from geofed_secure.privacy.accounting import PrivacyLedger, PrivacyPlan
from geofed_secure.privacy.dpsgd import DPSGDRound
from geofed_secure.privacy.mechanisms import private_precision_weight
from geofed_secure.privacy.noise import NODE_SECRET_BYTES, DPRandomness, new_node_secret, randomness_source
from geofed_secure.seeding import derive_seed, numpy_rng
from geofed_secure.wire.round import GRAM_FIELD, WEIGHT_FIELD, WEIGHTED_PREFIX, NodeUpdate, RoundBroadcast

N_CLASSES = 10
EVAL_BATCH = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeData:
    """Everything a node holds locally. ``paired_train`` (bridge nodes) is row-aligned with ``train``."""

    train: TokenFeatures
    test: TokenFeatures
    anchors: TokenFeatures  # public anchors of this node's modality, ordered by concept
    paired_train: TokenFeatures | None = None
    n_classes: int = N_CLASSES  # size of the node's (local) task head; the demo's: the ten digits
    labels_are_concepts: bool = True  # task labels index the anchor concepts (what cross-modal evaluation needs)

    def __post_init__(self) -> None:
        if self.paired_train is not None and len(self.paired_train) != len(self.train):
            raise DataError("paired_train must have one row per train sample (locally paired data)")
        if self.test.dim != self.train.dim or self.anchors.dim != self.train.dim:
            raise DataError(f"train/test/anchor feature widths differ: {self.train.dim}, {self.test.dim}, {self.anchors.dim}")
        if self.n_classes < 2:
            raise DataError(f"a node's task needs at least 2 labels, got n_classes = {self.n_classes}")
        for part in (self.train, self.test):
            if int(part.labels.min()) < 0 or int(part.labels.max()) >= self.n_classes:
                raise DataError(f"task labels must lie in [0, {self.n_classes}), got {int(part.labels.min())}..{int(part.labels.max())}")


@dataclass(frozen=True, slots=True)
class LocalRoundStats:
    task_loss: float
    geo_loss: float | None
    precision_weight: float
    gram_scale: float = float("nan")  # ||H G H||_F / B of the node's anchor Gram after the round (collapse: -> 0)
    effective_rank: float = float("nan")  # of that centred Gram (collapse: -> 1 or 0)


class NodeCollapsed(TrainingError):
    """The node's anchor embeddings collapsed (Gram scale below ``training.collapse_scale``): it refuses to upload."""


def info_nce(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between row-paired embeddings (bridge node's intra-node contrastive loss)."""
    logits = F.normalize(z_a, dim=1) @ F.normalize(z_b, dim=1).T / temperature
    target = torch.arange(len(z_a))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class Node:
    """One site. ``anchor_digest`` is the federation anchor commitment this node was provisioned with.

    ``dp_secret`` (DP in the default ``"node-secret"`` mode): the 32 bytes its DP noise and Poisson sampling derive
    from; None draws them from ``os.urandom``. They live only in this node and its :meth:`state_dict` (its own
    checkpoint), so the server cannot regenerate the noise and a resumed node reloads them.
    """

    def __init__(
        self,
        spec: NodeSpec,
        data: NodeData,
        config: RunConfig,
        *,
        anchor_digest: str,
        backbone_factory: Callable[[], torch.nn.Module],
        randomness_id: str | None = None,
        dp_secret: bytes | None = None,
    ) -> None:
        self.spec = spec
        self.node_id = spec.id
        # Batches derive from (federation seed, randomness_id, round), DP noise and sampling from (the DP randomness
        # source, randomness_id, round); the initial weights from (federation seed, spec.id). The audit's repeated
        # training runs of one node vary only the former two.
        self.randomness_id = randomness_id or spec.id
        self.config = config
        self.anchor_digest = anchor_digest
        self.data = data
        self.last_round = 0
        self.last_stats: LocalRoundStats | None = None
        # The normalised centred anchor Gram this node uploaded in round last_round (subtracted from the next
        # broadcast sum: leave-one-out consensus); None before its first upload.
        self.last_gram: torch.Tensor | None = None
        self._anchor_rng = numpy_rng(config.federation.seed, "anchor-batches", self.randomness_id, 0)
        # Progress inside a local round, for the operator's console: called with (step, steps) after every step.
        self.step_hook: Callable[[int, int], None] | None = None
        # An auditor's hook into every DP-SGD step (audit/gradient_canaries.py); None on every deployed node.
        self.dp_audit: Callable[[Sequence[torch.nn.Parameter], float], None] | None = None
        peft_model = geodora.apply_geodora(
            backbone_factory(),
            geodora.GeoDoRAConfig.from_section(config.model),
            federation_seed=config.federation.seed,
        )
        paired_dim = data.paired_train.dim if data.paired_train is not None else None
        torch.manual_seed(derive_seed(config.federation.seed, "init", spec.id))
        self.model = NodeModel(peft_model, in_dim=data.train.dim, n_classes=data.n_classes, paired_in_dim=paired_dim)
        self._anchors = self._prepare_anchors(data.anchors)
        self.model.adapter.centre_on(torch.from_numpy(self._anchors.tokens), torch.from_numpy(self._anchors.mask))
        self._magnitudes = set(map(id, geodora.magnitude_parameters(self.model)))
        self.privacy = self._privacy_ledger() if config.privacy.enabled else None
        self.dp_randomness = self._dp_randomness(dp_secret) if config.privacy.enabled else None

    def _privacy_ledger(self) -> PrivacyLedger:
        """This node's DP plan for the configured rounds, with the noise multiplier calibrated to its budget."""
        dp, training, n = self.config.privacy, self.config.training, len(self.data.train)  # bridge nodes: refused by config
        plan = PrivacyPlan(epsilon=dp.epsilon, delta=dp.delta, accountant=dp.accountant, max_grad_norm=dp.max_grad_norm,
                           sample_rate=min(1.0, training.batch_size / n), steps_per_round=training.local_steps,
                           lap_sample_rate=min(1.0, training.lap_samples / n), rounds=self.config.federation.rounds,
                           weight_budget_share=dp.weight_budget_share)
        return PrivacyLedger(plan, *plan.calibrate())

    def _dp_randomness(self, secret: bytes | None) -> DPRandomness:
        source = randomness_source(self.config.privacy)
        if source != "node-secret":
            return DPRandomness(source, federation_seed=self.config.federation.seed)
        return DPRandomness(source, secret=new_node_secret() if secret is None else bytes(secret))

    # -- provisioning -------------------------------------------------------------------------------
    def _prepare_anchors(self, anchors: TokenFeatures) -> TokenFeatures:
        """Apply the configured degradation / null control to this node's copy of the anchor features."""
        tokens = anchors.tokens
        if self.spec.anchor_noise > 0:
            rng = numpy_rng(self.config.federation.seed, "anchor-noise", self.node_id)
            scale = self.spec.anchor_noise * float(tokens.std())
            tokens = (tokens + rng.normal(0.0, scale, size=tokens.shape)).astype(np.float32)
        order = np.arange(len(anchors))
        if self.spec.shuffle_anchors:
            order = numpy_rng(self.config.federation.seed, "anchor-shuffle", self.node_id).permutation(len(anchors))
        return TokenFeatures(tokens[order], anchors.mask[order], anchors.labels[order])

    # -- protocol -----------------------------------------------------------------------------------
    def handle_broadcast(self, broadcast: RoundBroadcast) -> NodeUpdate:
        """Validate the round's broadcast, train locally, and return this round's upload."""
        if broadcast.federation_id != self.config.federation.id:
            raise MessageError(f"{self.node_id}: broadcast for federation {broadcast.federation_id!r}, expected {self.config.federation.id!r}")
        if broadcast.round <= self.last_round:
            raise MessageError(f"{self.node_id}: broadcast for round {broadcast.round} but round {self.last_round} is done (replayed or stale)")
        verify_anchor_digest(self.anchor_digest, broadcast.anchor_digest, where=f"node {self.node_id}, round {broadcast.round}")
        expected = set(self.shared_keys())
        if set(broadcast.global_state) != expected:
            raise MessageError(f"{self.node_id}: broadcast global state does not match this model's adapters "
                               f"(got {len(broadcast.global_state)} tensors, expected {len(expected)})")
        n_anchors = len(self._anchors)
        if broadcast.consensus_gram is not None and broadcast.consensus_gram.shape != (n_anchors * (n_anchors - 1) // 2,):
            raise MessageError(f"{self.node_id}: consensus Gram has {broadcast.consensus_gram.shape[0]} entries, expected {n_anchors * (n_anchors - 1) // 2} for B={n_anchors}")
        geodora.load_shared_state(self.model.backbone, {k: torch.from_numpy(np.array(v)) for k, v in broadcast.global_state.items()})
        consensus = None
        if broadcast.consensus_gram is not None:
            consensus = self.leave_one_out(broadcast.round, np.array(broadcast.consensus_gram))
        snapshot = self.state_dict()
        try:
            payload = self.local_round(broadcast.round, consensus=consensus)
            self._refuse_if_collapsed(broadcast.round)
        except Exception:
            # A failed round leaves the node as it was, except its privacy ledger: steps taken stay spent.
            self.load_state_dict(snapshot, privacy=False)
            raise
        return NodeUpdate(federation_id=broadcast.federation_id, round=broadcast.round, node_id=self.node_id,
                          anchor_digest=self.anchor_digest, payload=payload)

    def leave_one_out(self, round_: int, consensus_sum: np.ndarray) -> torch.Tensor | None:
        """The consensus this node trains against: the broadcast SUM of normalised centred Grams minus its own.

        The server sums what the contributors of the previous round uploaded; a node that uploaded in that round
        subtracts its own upload, so it is never scored against itself. Limitation: a node that uploaded but was
        left out of the sum after that (dropped at a later secure-aggregation stage) cannot tell and subtracts it
        anyway. Returns None when nothing of the other nodes remains (e.g. it was the only contributor).
        """
        n_anchors = len(self._anchors)
        total = centred_gram_from_upper(torch.from_numpy(consensus_sum.astype(np.float64)), n_anchors)
        if self.last_gram is not None and self.last_round == round_ - 1:
            total = total - self.last_gram.to(total.dtype)
        return total if float(torch.linalg.matrix_norm(total)) > 1e-6 else None

    def _refuse_if_collapsed(self, round_: int) -> None:
        stats, floor = self.last_stats, self.config.training.collapse_scale
        if stats is not None and stats.gram_scale < floor:
            raise NodeCollapsed(f"{self.node_id}: anchor embeddings collapsed in round {round_} (Gram scale "
                                f"{stats.gram_scale:.2e} < training.collapse_scale = {floor:g}, effective rank "
                                f"{stats.effective_rank:.2f}); the upload is refused and the round undone")

    def shared_keys(self) -> list[str]:
        """Names of the tensors the server averages: every B, and every m when magnitudes are averaged."""
        keys = list(geodora.get_lora_b(self.model.backbone))
        if self.config.model.magnitude == "averaged":
            keys += list(geodora.get_magnitudes(self.model.backbone))
        return keys

    # -- local training -----------------------------------------------------------------------------
    def local_round(self, round_: int, *, consensus: torch.Tensor | None) -> dict[str, np.ndarray]:
        """Train for ``training.local_steps`` steps and build the upload payload (summable fields).

        Under DP (``privacy.epsilon > 0``) the node first checks that the round fits its budget and raises
        :class:`PrivacyBudgetExceeded` before touching anything if it does not.
        """
        if self.privacy is not None:
            self.privacy.check_round(self.node_id, round_)
        cfg = self.config.training
        seed = self.config.federation.seed
        rng = numpy_rng(seed, "batches", self.randomness_id, round_)
        torch.manual_seed(derive_seed(seed, "torch", self.randomness_id, round_))
        model = self.model
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
        consensus = consensus if cfg.lambda_geo > 0 else None
        self._anchor_rng = numpy_rng(seed, "anchor-batches", self.randomness_id, round_)
        if self.privacy is None:
            task_losses, geo_losses = self._train_steps(round_, optimizer, trainable, rng, consensus)
        else:
            task_losses, geo_losses = self._train_steps_private(round_, optimizer, consensus)
        model.eval()
        with torch.no_grad():
            anchor_z = self.embed(self._anchors)
            weight = self._precision_weight(round_, rng, anchor_z)
            cosines = cosine_gram(anchor_z.double())
            # every node uploads its centred Gram at unit norm, so every modality counts the same in the sum
            gram = normalised_centred_gram(cosines)
        payload = {GRAM_FIELD: gram_upper(gram).numpy().astype(np.float32), WEIGHT_FIELD: np.array([weight], np.float32)}
        shared = geodora.get_lora_b(model.backbone)
        if self.config.model.magnitude == "averaged":
            shared |= geodora.get_magnitudes(model.backbone)
        for key, value in shared.items():
            if not torch.isfinite(value).all():
                raise TrainingError(f"{self.node_id}: parameter {key} became non-finite in round {round_}")
            payload[WEIGHTED_PREFIX + key] = (np.float32(weight) * value.numpy()).astype(np.float32)
        self.last_round = round_
        self.last_gram = gram.to(torch.float32)  # as uploaded
        self.last_stats = LocalRoundStats(
            task_loss=float(np.mean(task_losses)) if task_losses else float("nan"),
            geo_loss=float(np.mean(geo_losses)) if geo_losses else None,
            precision_weight=float(weight), gram_scale=gram_scale(cosines), effective_rank=effective_rank(cosines),
        )
        return payload

    def _task_loss(self, index: np.ndarray, *, per_sample: bool = False) -> torch.Tensor:
        """The private task loss on ``index`` (mean, or one value per record); a bridge node adds its InfoNCE term."""
        train = self.data.train
        z = self.model.embed(*self._tensors(train, index))
        loss = F.cross_entropy(self.model.head(z), torch.from_numpy(train.labels[index]), reduction="none" if per_sample else "mean")
        if self.data.paired_train is not None:  # never under DP (config validation): InfoNCE couples the batch
            z_pair = self.model.embed(*self._tensors(self.data.paired_train, index), paired=True)
            loss = loss + info_nce(z, z_pair, self.config.training.contrastive_temperature)
        return loss

    def _train_steps(self, round_: int, optimizer: torch.optim.Optimizer, trainable: list[torch.nn.Parameter],
                     rng: np.random.Generator, consensus: torch.Tensor | None) -> tuple[list[float], list[float]]:
        """Non-private local steps: fixed-size batches without replacement, task + lambda * geometric gradient."""
        cfg = self.config.training
        task_losses, geo_losses = [], []
        for step in range(cfg.local_steps):
            index = rng.choice(len(self.data.train), size=min(cfg.batch_size, len(self.data.train)), replace=False)
            loss = self._task_loss(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            task_losses.append(float(loss.detach()))
            if consensus is not None:
                geo, grads = self.geometric_gradients(consensus)
                for param in trainable:
                    if id(param) in grads:
                        scaled = cfg.lambda_geo * grads[id(param)]
                        param.grad = scaled if param.grad is None else param.grad + scaled
                geo_losses.append(geo)
            if not all(torch.isfinite(p.grad).all() for p in trainable if p.grad is not None):
                raise TrainingError(f"{self.node_id}: non-finite gradient in round {round_}; lower training.lr or check the data")
            optimizer.step()
            self._stepped(step + 1)
        return task_losses, geo_losses

    def _train_steps_private(self, round_: int, optimizer: torch.optim.Optimizer,
                             consensus: torch.Tensor | None) -> tuple[list[float], list[float]]:
        """DP-SGD local steps (:mod:`geofed_secure.privacy.dpsgd`): Poisson batches, per-sample clipping, noise;
        the public anchor gradient is added after the noise, outside the accounting."""
        cfg, ledger, dp, randomness = self.config.training, self.privacy, self.config.privacy, self.dp_randomness
        assert ledger is not None and randomness is not None
        sampler = randomness.sampling_rng(self.randomness_id, round_)
        n = len(self.data.train)
        task_losses, geo_losses = [], []
        with DPSGDRound(self.model, optimizer, noise_multiplier=ledger.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                        expected_batch_size=ledger.plan.sample_rate * n, step_hook=ledger.optimizer_hook(),
                        randomness=randomness, purpose=("sgd", self.randomness_id, round_),
                        grad_sample_mode=dp.grad_sample_mode, audit=self.dp_audit) as private:
            for step in range(cfg.local_steps):
                private.zero_grad()
                index = np.flatnonzero(sampler.random(n) < ledger.plan.sample_rate)
                if len(index):
                    loss = self._task_loss(index, per_sample=True)
                    private.private_backward(loss)
                    task_losses.append(float(loss.detach().mean()))
                else:
                    private.empty_batch()
                public: dict[int, torch.Tensor] = {}
                if consensus is not None:
                    with private.hooks_off():
                        geo, grads = self.geometric_gradients(consensus)
                    public = {k: cfg.lambda_geo * g for k, g in grads.items()}
                    geo_losses.append(geo)
                try:
                    private.step(public)
                except TrainingError as exc:
                    raise TrainingError(f"{self.node_id}, round {round_}: {exc}") from None
                self._stepped(step + 1)
        return task_losses, geo_losses

    def _stepped(self, step: int) -> None:
        if self.step_hook is not None:
            self.step_hook(step, self.config.training.local_steps)

    def _precision_weight(self, round_: int, rng: np.random.Generator, anchor_z: torch.Tensor) -> float:
        """Eq. 6 on private samples; under DP the privatised release of :mod:`geofed_secure.privacy.mechanisms`."""
        cfg, train = self.config.training, self.data.train
        if self.privacy is None:
            lap_index = rng.choice(len(train), size=min(cfg.lap_samples, len(train)), replace=False)
            return precision_weight(centred_lap_uncertainty(self.embed(train.subset(lap_index)), anchor_z),
                                    max_inverse=cfg.max_inverse_uncertainty)
        randomness, rate = self.dp_randomness, self.privacy.plan.lap_sample_rate
        assert randomness is not None
        lap_index = np.flatnonzero(randomness.sampling_rng("weight", self.randomness_id, round_).random(len(train)) < rate)
        u = centred_lap_uncertainty(self.embed(train.subset(lap_index)), anchor_z).numpy() if len(lap_index) else np.zeros(0)
        weight = private_precision_weight(
            u, expected_count=rate * len(train), max_inverse=cfg.max_inverse_uncertainty,
            noise_multiplier=self.privacy.weight_noise_multiplier, secure_mode=randomness.robust_sampler,
            generator=randomness.noise_generator("weight", self.randomness_id, round_))
        self.privacy.record_release()
        return weight

    def geometric_gradients(self, consensus: torch.Tensor) -> tuple[float, dict[int, torch.Tensor]]:
        """1 - CKA(G_k, G_bar) on the public anchors, plus the collapse guard, and its gradient, keyed by ``id(param)``.

        Centred CKA cannot see the scale of the centred Gram, so a node can lower it by collapsing; the guard
        :func:`~geofed_secure.alignment.geometry.scale_floor_penalty` (``training.gram_scale_floor``) adds
        ``relu(1 - scale / floor)^2``, zero while the anchor geometry keeps its size. Each step uses a random subset
        of ``training.anchor_batch`` anchors (and the matching block of the consensus): the CKA of a random block is
        a stochastic estimate of the full one at a fraction of the cost of embedding every anchor every step.

        The loss acts on the DIRECTION only: magnitudes are excluded from the differentiation, which is exactly
        ``m.detach()`` in the anchor pass. It is a separate gradient so that DP-SGD can add it after clipping and
        noise (it depends only on public anchors and current parameters).
        """
        params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in self._magnitudes]
        cfg, n_anchors = self.config.training, len(self._anchors)
        index = np.arange(n_anchors)
        if 0 < cfg.anchor_batch < n_anchors:
            index = np.sort(self._anchor_rng.choice(n_anchors, size=cfg.anchor_batch, replace=False))
        gram = cosine_gram(self.model.embed(*self._tensors(self._anchors, index)))
        block = consensus[torch.from_numpy(index)][:, torch.from_numpy(index)]
        loss = cka_loss(gram, block) + scale_floor_penalty(gram, cfg.gram_scale_floor)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return float(loss.detach()), {id(p): g for p, g in zip(params, grads) if g is not None}

    # -- evaluation helpers (used by drivers on this node's own data) --------------------------------
    @staticmethod
    def _tensors(features: TokenFeatures, index: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch tensors with trailing all-padding token columns cut off (pure speed: those tokens are masked)."""
        tokens = features.tokens if index is None else features.tokens[index]
        mask = features.mask if index is None else features.mask[index]
        length = int(np.flatnonzero(mask.any(axis=0)).max()) + 1
        return (torch.from_numpy(np.ascontiguousarray(tokens[:, :length])),
                torch.from_numpy(np.ascontiguousarray(mask[:, :length])))

    @torch.no_grad()
    def embed(self, features: TokenFeatures) -> torch.Tensor:
        """Pooled embeddings of ``features`` (this node's modality), in batches."""
        was_training = self.model.training
        self.model.eval()
        out = [self.model.embed(*self._tensors(features, np.arange(i, min(i + EVAL_BATCH, len(features)))))
               for i in range(0, len(features), EVAL_BATCH)]
        self.model.train(was_training)
        return torch.cat(out)

    @property
    def anchors(self) -> TokenFeatures:
        return self._anchors

    @contextlib.contextmanager
    def using_shared_state(self, state: Mapping[str, np.ndarray] | None) -> Iterator[Node]:
        """Temporarily load a (global) shared state, e.g. to evaluate the aggregated model; restores after."""
        if not state:
            yield self
            return
        saved = geodora.get_lora_b(self.model.backbone) | geodora.get_magnitudes(self.model.backbone)
        geodora.load_shared_state(self.model.backbone, {k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        try:
            yield self
        finally:
            geodora.load_shared_state(self.model.backbone, saved)

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to resume this node bit-identically (its optimizer is rebuilt every round)."""
        state = {f"local/{k}": v for k, v in self.model.local_state().items()}
        shared = geodora.get_lora_b(self.model.backbone) | geodora.get_magnitudes(self.model.backbone)
        state |= {f"shared/{k}": v for k, v in shared.items()}
        state["meta/last_round"] = torch.tensor([self.last_round], dtype=torch.int64)
        if self.last_gram is not None:
            state["meta/last_gram"] = self.last_gram.clone()
        if self.privacy is not None:
            state |= self.privacy.state_dict()
        if self.dp_randomness is not None and self.dp_randomness.source == "node-secret":  # this node's own storage only
            state["privacy/node_secret"] = torch.tensor(list(self.dp_randomness.secret), dtype=torch.uint8)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor], *, privacy: bool = True) -> None:
        """Restore a :meth:`state_dict`; ``privacy=False`` keeps the current (spent) privacy ledger."""
        self.model.load_local_state({k[6:]: v for k, v in state.items() if k.startswith("local/")})
        geodora.load_shared_state(self.model.backbone, {k[7:]: v for k, v in state.items() if k.startswith("shared/")})
        self.last_round = int(state["meta/last_round"][0])
        last_gram = state.get("meta/last_gram")
        self.last_gram = None if last_gram is None else last_gram.clone()
        if privacy and self.privacy is not None:
            self.privacy.load_state_dict(state)
        if privacy and self.dp_randomness is not None and self.dp_randomness.source == "node-secret":
            secret = state.get("privacy/node_secret")
            if secret is None or secret.numel() != NODE_SECRET_BYTES:
                raise CheckpointError("the checkpoint holds no DP node secret for a node whose noise derives from one "
                                      "(privacy.secure_mode and privacy.shared_seed_noise off); it was written by another "
                                      "version or mode, and resuming with a fresh secret would not be bit-identical")
            self.dp_randomness = DPRandomness("node-secret", secret=bytes(secret.to(torch.uint8).tolist()))
