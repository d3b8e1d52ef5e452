"""FCCO losses for FastCLIP: GCL (v0, v1, SogCLR), RGCL (v2, iSogCLR), RGCL-g (v3).

    python -m pytest -q tests/test_losses.py tests/test_versions.py

The math is in docs/algorithm.md (§1 objectives, §2 estimator, §3 temperatures, §5 distributed
step); the versions are the records of ``open_clip_patch.versions``. Notation: gᵢ = mean over j≠i
of exp(dᵢⱼ/τ), dᵢⱼ the similarity of anchor i to negative j minus that to its positive; one g (and
one u) per anchor for the image side and one for the text side. The batch is the global batch B
of N = K·b pairs.

Surrogate (its autograd gradient is the FCCO estimator; u never carries gradient):
    GCL     v0 v1 sogclr   mean_i gᵢ/(ε+uᵢ)                    gradient of mean log(ε+g)
    RGCL    v2 isogclr     mean_i τᵢ·gᵢ(τᵢ)/(ε+uᵢ)              gradient of mean τᵢ(log(ε+gᵢ)+ρ)
    RGCL-g  v3             mean_i τ̄·gᵢ/(ε+uᵢ) + τ·(mean log(ε+u) + 2ρ)   (τ̄: τ detached)
summed over the image and text sides. A global τ is 1/logit_scale, live for the global-learnable
scheme (v0, v3 by default) and detached for global-constant (v1, sogclr); the loss takes the
scheme from its configuration (the version's, or ``temperature_scheme=``). v2/isogclr keep τᵢ
per sample and update it inside the loss with a rule of ``open_clip_patch.tau_updates``.

Distributed split (docs/algorithm.md §5). Rank r holds b local pairs and the gathered (no-grad)
features of all N. Its surrogate is (1/b)·[anchor part + negative part]:
    anchor part    Σ over local anchors i of the term above, negatives taken from the gathered
                   features: gradient through the anchor and its positive;
    negative part  Σ over all N anchors of the same term restricted to the local negatives, with
                   the anchors' features and u/τ as constants: gradient through the negatives.
Every (anchor, negative) pair lives in exactly one rank's anchor part and one rank's negative
part, so the per-rank gradients average (DDP / Horovod allreduce) to the single-process gradient.
A learnable global τ is live only in the anchor part (fcco_mode="exact");
fcco_mode="reference" leaves it live in the negative part too, which is how the reference
implementation counts the τ·∂g/(ε+u) term twice (docs/algorithm.md §3).

FCCO modes (versions.FCCO_MODES; docs/algorithm.md §3, §9). "exact" computes the estimator of
the stated objective; "reference" reproduces the reference implementation, under which the
published settings were tuned: the surrogate is ½[anchor part + negative part], and RGCL (v2)
drops the τᵢ prefactor, applies ε and the 1e-35 reset to the shifted u·e^(−bᵢ) (bᵢ a running max
of zᵢⱼ kept per sample, i.e. an effective ε·e^(bᵢ)), takes the updated τ in the negative part and
steps τ with the reference's Adam (tau_updates.reference_adam_tau_update).

Numerics. u is stored as log u and updated as log((1-γ)u + γg) with logaddexp, and g is computed
by logsumexp, so no exp can overflow at small τ: every weight exp(dᵢⱼ/τ − log(ε+uᵢ)) is at most
(N-1)/γ. This replaces the reference's running-max shifts bᵢ (log u = log u_shifted + b).
Features arriving in bf16/fp16 are cast to float32 and the loss runs with autocast disabled.

The returned tensor has the surrogate's gradient and the value of the objective estimate on the
rank's local anchors (GCL: mean log(ε+u₁)+log(ε+u₂); RGCL and RGCL-g: the objectives above with
g→u), so logged losses are meaningful while backward stays exact.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn

from .comm import LocalComm
from .state import PerSampleState, column_names
from .tau_updates import TAU_UPDATE_RULES, clip_tau_gradient
from .versions import FCCO_MODES, VERSIONS

SIDES = ("image", "text")
# [ref-code] entries of u below this, inf or nan are reset to the fresh g when γ < 1.
LOG_U_RESET_BELOW = math.log(1e-35)
STATE_LAYOUTS = ("replicated", "sharded")
# State columns renamed since earlier checkpoints were written: old name -> new name.
RENAMED_COLUMNS = {f"tau_grad_avg_{side}": f"tau_grad_ema_{side}" for side in SIDES}


def log_moving_average(log_u_old: torch.Tensor, log_g: torch.Tensor, gamma: float,
                       reset_shift: Optional[torch.Tensor] = None):
    """log((1-γ)·u_old + γ·g); entries of u_old that are < 1e-35, inf or nan restart from g.
    With ``reset_shift`` b the test applies to u_old·e^(−b), the reference's stored value."""
    if gamma >= 1.0:
        return log_g.clone()
    mixed = torch.logaddexp(log_u_old + math.log1p(-gamma), log_g + math.log(gamma))
    tested = log_u_old if reset_shift is None else log_u_old - reset_shift
    # one comparison pair instead of isfinite's four ops: nan fails both, ±inf one of them
    stale = ~((tested >= LOG_U_RESET_BELOW) & (tested < math.inf))
    return torch.where(stale, log_g, mixed)


def rgcl_tau_gradient(logits, log_eps_u, rho, positive_mask):
    """∂/∂τᵢ of τᵢ(log(ε+gᵢ(τᵢ)) + ρ) with g→u where the estimator says so:
    log(ε+uᵢ) + ρ − mean_{j≠i} exp(zᵢⱼ)·zᵢⱼ/(ε+uᵢ), with zᵢⱼ = dᵢⱼ/τᵢ (−inf on the positive)."""
    weights = torch.exp(logits - log_eps_u[:, None])
    weighted = (weights * logits.masked_fill(positive_mask, 0.0)).sum(1)
    return log_eps_u + rho - weighted / (logits.shape[1] - 1)


@dataclass
class _Batch:
    image: torch.Tensor         # (b, d) local features, carry the gradient
    text: torch.Tensor
    all_image: torch.Tensor     # (N, d) gathered, no gradient
    all_text: torch.Tensor
    ids: torch.Tensor           # (b,) int64 on the state device
    offset: int                 # position of the local block inside the gathered batch
    all_ids: Optional[torch.Tensor] = None   # (N,) int64, gathered with the features (sharded)
    positive_mask: torch.Tensor = field(init=False)   # (b, N) True at each local pair

    def __post_init__(self):
        rows = torch.arange(self.local_size, device=self.image.device)
        cols = torch.arange(self.global_size, device=self.image.device)
        self.positive_mask = cols[None, :] == (rows + self.offset)[:, None]

    @property
    def local_size(self) -> int:
        return self.image.shape[0]

    @property
    def global_size(self) -> int:
        return self.all_image.shape[0]


@dataclass
class _Side:
    """One anchor modality: image anchors (vs texts) or text anchors (vs images)."""
    name: str
    anchor_sim: torch.Tensor    # (b, N) local anchors vs all others; grad → local anchors
    negative_sim: torch.Tensor  # (b, N) local negatives (rows) vs all anchors; grad → negatives
    logits: Optional[torch.Tensor] = None  # (b, N) dᵢⱼ/τᵢ, −inf on the positive
    log_g: Optional[torch.Tensor] = None    # (b,) detached


def _weighted_sum(terms, coef, index):
    """Σ coef·terms, with coef None (all ones), a scalar, or per-anchor values sliced by index."""
    if coef is None:
        return terms.sum()
    if coef.dim() == 0:
        return coef * terms.sum()
    return (coef[index] * terms).sum()


def log_eps_plus(log_u, eps: float, shift: Optional[torch.Tensor] = None):
    """log(ε + u) from log u; with a per-sample ``shift`` b, log(ε·e^b + u) (the reference's ε
    added to the shifted u·e^(−b), scaled back)."""
    if eps == 0:
        return log_u
    if shift is None:
        return torch.logaddexp(log_u, torch.full_like(log_u, math.log(eps)))
    return torch.logaddexp(log_u, shift.to(log_u.dtype) + math.log(eps))


# ------------------------------------------------------------------------- gather and checks
def _ids_as_rows(ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The int64 ids' bytes as rows of ``like``'s dtype and width (zero padded), so they travel
    bit for bit in the feature all-gather instead of costing a collective of their own."""
    elements = ids.contiguous().view(torch.uint8).view(like.dtype)
    width = like.shape[1]
    padded = elements.new_zeros(-(-elements.numel() // width) * width)
    padded[:elements.numel()] = elements
    return padded.view(-1, width)


def _rows_as_ids(rows: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`_ids_as_rows` for one rank's rows."""
    elements = rows.reshape(-1)[:count * 8 // rows.element_size()].contiguous()
    return elements.view(torch.uint8).view(torch.int64)


def gather_batch(comm, state: PerSampleState, image_features, text_features,
                 sample_ids) -> _Batch:
    """Check the step's inputs and gather every rank's features (no gradient) in one call; a
    sharded state needs every rank's ids before it reads, so they ride along."""
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(f"expected image and text features of the same (b, d) shape, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    ids = state.validate_ids(sample_ids)
    local_size = image_features.shape[0]
    if ids.numel() != local_size:
        raise ValueError(f"{ids.numel()} sample ids for a batch of {local_size} pairs")
    dtype = image_features.dtype
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32      # exact upcast; gathering first keeps the traffic small
    world = comm.world_size
    if world == 1:   # nothing to gather: skip the copies (the loss runs every step)
        image, text = image_features.to(dtype), text_features.to(dtype)
        check_finite(torch.stack([image.detach(), text.detach()])[None])
        return _Batch(image, text, image.detach(), text.detach(), ids, offset=0)
    parts = [image_features.detach(), text_features.detach().to(image_features.dtype)]
    if state.sharded:
        parts.append(_ids_as_rows(ids.to(image_features.device), image_features))
    stacked = torch.cat(parts)
    gathered = comm.all_gather_no_grad(stacked)
    image, text = image_features.to(dtype), text_features.to(dtype)
    if gathered.shape != (world * stacked.shape[0], image.shape[1]):
        raise ValueError(f"gathered features have shape {tuple(gathered.shape)}; every rank "
                         f"must pass the same local batch size ({local_size})")
    gathered = gathered.view(world, stacked.shape[0], -1)
    all_ids = None
    if state.sharded:
        all_ids = torch.cat([_rows_as_ids(gathered[r, 2 * local_size:], local_size)
                             for r in range(world)]).to(state.device)
    per_rank = gathered[:, :2 * local_size].to(dtype).view(world, 2, local_size, -1)
    check_finite(per_rank)   # rank, [image, text], sample, dim
    n = world * local_size
    return _Batch(image, text, per_rank[:, 0].reshape(n, -1), per_rank[:, 1].reshape(n, -1),
                  ids, offset=comm.rank * local_size, all_ids=all_ids)


def check_finite(per_rank_features):
    """Refuse NaN/inf features, naming the side and rank, before any state is written."""
    finite = torch.isfinite(per_rank_features).flatten(2).all(dim=2)   # (ranks, 2)
    if bool(finite.all()):
        return
    bad = [f"{SIDES[m]} features of rank {r}" for r, m in (~finite).nonzero().tolist()]
    raise ValueError(f"non-finite (NaN/inf) values in {', '.join(bad)}; the FCCO state was "
                     f"not updated")


def global_tau(logit_scale, batch: _Batch, learnable: bool) -> torch.Tensor:
    """τ = 1/logit_scale, live for a learnable global τ and detached otherwise."""
    if not isinstance(logit_scale, torch.Tensor):
        logit_scale = torch.tensor(float(logit_scale))
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must hold one value, got shape {logit_scale.shape}")
    scale = logit_scale.reshape(()).to(device=batch.image.device, dtype=batch.image.dtype)
    value = float(scale.detach())
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"logit_scale must be finite and positive, got {value}")
    tau = 1.0 / scale
    return tau if learnable else tau.detach()


# ---------------------------------------------------------------------------- state sharing
def read_state(comm, state: PerSampleState, batch: _Batch, device, dtype) -> torch.Tensor:
    """The old rows of the local ids. Replicated: a local read. Sharded: each owner sends the
    rows it holds for every rank's local ids in one all-to-all (order: by destination rank, then
    by position in its batch; the receiver puts them back by the same rule)."""
    if not state.sharded:
        return state.read(batch.ids, device, dtype, validated=True)
    world, b = comm.world_size, batch.local_size
    owners = state.owner_of(batch.all_ids).view(world, b)
    mine = owners == comm.rank
    outgoing = state.read(batch.all_ids.view(world, b)[mine], validated=True)
    my_owners = owners[comm.rank]
    received = comm.all_to_all(outgoing, mine.sum(1).tolist(),
                               torch.bincount(my_owners, minlength=world).tolist())
    rows = torch.empty_like(received)
    rows[torch.argsort(my_owners, stable=True)] = received
    return rows.to(device=device, dtype=dtype)


def share_state(comm, state: PerSampleState, batch: _Batch, new_local, old,
                individual_tau: bool) -> Dict[str, torch.Tensor]:
    """One all-gather of the new state (+ the τ used this step, + the ids unless they came with
    the features); every replica writes all rows, every shard the rows it owns.
    Returns the new state columns of the global batch and, for per-sample τ, ``used_tau_*``."""
    local_rows = state.pack(new_local)
    if comm.world_size == 1:
        state.write(batch.ids, local_rows, validated=True)
        used = {f"used_tau_{s}": old[f"tau_{s}"] for s in SIDES} if individual_tau else {}
        return {**new_local, **used}
    packed = [local_rows.to(torch.float64)]
    if not state.sharded:
        packed.insert(0, batch.ids.to(device=local_rows.device, dtype=torch.float64)[:, None])
    if individual_tau:   # the negative part needs each anchor's τ before its update
        packed.append(torch.stack([old[f"tau_{s}"] for s in SIDES], 1).to(torch.float64))
    gathered = comm.all_gather_scalars(torch.cat(packed, dim=1))
    first, columns = (0 if state.sharded else 1), len(state.columns)
    global_rows = gathered[:, first:first + columns]
    if state.sharded:
        owned = state.owns(batch.all_ids)
        state.write(batch.all_ids[owned], global_rows[owned.to(global_rows.device)],
                    validated=True)
        state.last_shared = (batch.all_ids, global_rows)   # for the shard checks (comm.py)
    else:
        state.write(gathered[:, 0].round().long(), global_rows, validated=True)
    shared = {k: v.to(batch.image.dtype) for k, v in state.unpack(global_rows).items()}
    if individual_tau:
        used = gathered[:, first + columns:].to(batch.image.dtype)
        shared.update({f"used_tau_{s}": used[:, i] for i, s in enumerate(SIDES)})
    return shared


def diagnostics(gamma, global_tau_value, old, new_local, tau_gradients,
                individual_tau: bool) -> Dict[str, torch.Tensor]:
    """Detached scalars logged beside the loss (the ``fcco_*`` entries of output_dict)."""
    log_u = torch.cat([new_local[f"log_u_{s}"] for s in SIDES])
    out = {"fcco_log_u_mean": log_u.mean().detach(),
           "fcco_gamma": torch.tensor(gamma, device=log_u.device)}
    if individual_tau:
        taus = torch.cat([old[f"tau_{s}"] for s in SIDES]).detach()
        gradients = torch.cat([tau_gradients[s] for s in SIDES]).detach()
        out.update(fcco_tau_mean=taus.mean(), fcco_tau_min=taus.min(),
                   fcco_tau_max=taus.max(), fcco_tau_grad_mean=gradients.mean())
    else:
        out["fcco_tau"] = global_tau_value.detach()
    return out


class FastCLIPLoss(nn.Module):
    """FCCO contrastive loss; call as ``loss(image_features, text_features, logit_scale,
    sample_ids)``.

    Args:
        version: a name of ``open_clip_patch.versions.VERSIONS``.
        data_size: size of the sample-id space; sample ids must lie in [0, data_size).
        rho, eps: ρ of RGCL/RGCL-g and ε inside log(ε+g). None = the version's default.
        fcco_mode: "exact" (the stated objective's estimator) or "reference" (the reference
            implementation's, for the published settings; versions.FCCO_MODES says what
            changes). ``tau_grad_mode`` is its old name.
        gamma: the current γ of u ← (1-γ)u + γg; the trainer sets ``loss.gamma`` each step.
        temperature, temperature_scheme: τ₀ and how τ is held (None = the version's). A global
            τ comes from ``logit_scale`` (live for global-learnable, detached for
            global-constant); temperature is then only the trainer's initial logit scale.
        lr_tau, tau_betas, tau_eps: per-sample τ (v2, isogclr): step size (``loss.lr_tau``),
            Adam betas/eps (v2; reference mode: betas 0 in epoch 0).
        tau_min, tau_max: clamp of the per-sample τ.
        comm: a communicator (open_clip_patch.comm); default LocalComm (one process).
        state_device, state_dtype: where and how the per-sample state is stored.
        state_layout: "replicated" (every rank holds all rows) or "sharded" (rank r holds the
            block of ids it owns, open_clip_patch.state.block_of); one process is always whole.
    """

    def __init__(self, version: str, data_size: int, rho: Optional[float] = None,
                 eps: float = 1e-14, fcco_mode: Optional[str] = None, gamma: float = 1.0,
                 temperature: Optional[float] = None, temperature_scheme: Optional[str] = None,
                 lr_tau: Optional[float] = None, tau_betas=(0.9, 0.999), tau_eps: float = 1e-8,
                 tau_min: Optional[float] = None, tau_max: Optional[float] = None,
                 comm=None, state_device="cpu", state_dtype: torch.dtype = torch.float32,
                 state_layout: str = "replicated", tau_grad_mode: Optional[str] = None):
        super().__init__()
        if fcco_mode is not None and tau_grad_mode is not None and fcco_mode != tau_grad_mode:
            raise ValueError(f"fcco_mode={fcco_mode!r} and its old name tau_grad_mode="
                             f"{tau_grad_mode!r} disagree")
        fcco_mode = fcco_mode or tau_grad_mode or "exact"
        if version not in VERSIONS:
            raise ValueError(f"unknown FCCO version {version!r}; choose from {sorted(VERSIONS)}")
        if fcco_mode not in FCCO_MODES:
            raise ValueError(f"fcco_mode (tau_grad_mode) must be one of {tuple(FCCO_MODES)}, "
                             f"got {fcco_mode!r}")
        try:
            self.spec = VERSIONS[version].with_overrides(
                temperature_scheme=temperature_scheme, temperature=temperature, rho=rho,
                lr_tau=lr_tau, tau_min=tau_min, tau_max=tau_max)
        except ValueError as error:
            raise ValueError(f"FCCO version {version}: {error}") from None
        self.version = version
        self._validate_spec(eps, tau_betas, tau_eps)
        self.eps = float(eps)
        self.fcco_mode = fcco_mode
        self.mode = FCCO_MODES[fcco_mode]
        self.gamma = gamma
        self.lr_tau = self.spec.lr_tau
        self.tau_betas = tuple(float(b) for b in tau_betas)
        self.tau_eps = float(tau_eps)
        self.epoch = 0
        self.comm = comm if comm is not None else LocalComm()
        if state_layout not in STATE_LAYOUTS:
            raise ValueError(f"state_layout must be one of {STATE_LAYOUTS}, got {state_layout!r}")
        shard = ((self.comm.rank, self.comm.world_size)
                 if state_layout == "sharded" and self.comm.world_size > 1 else None)
        self.state = PerSampleState(data_size, self._state_columns(), state_device, state_dtype,
                                    shard=shard)

    # ----------------------------------------------------------------- configuration
    def _validate_spec(self, eps, tau_betas, tau_eps):
        spec = self.spec
        if eps < 0 or spec.rho < 0:
            raise ValueError(f"eps and rho must be >= 0, got eps={eps}, rho={spec.rho}")
        if self.individual_tau:
            if not 0 < spec.tau_min <= spec.temperature <= spec.tau_max:
                raise ValueError(f"need 0 < tau_min <= temperature <= tau_max, got "
                                 f"{spec.tau_min}, {spec.temperature}, {spec.tau_max}")
            if not all(0 <= b < 1 for b in tau_betas) or tau_eps <= 0:
                raise ValueError(f"bad per-sample Adam settings betas={tau_betas} eps={tau_eps}")

    @property
    def individual_tau(self) -> bool:
        return self.spec.individual_tau

    @property
    def learnable_global_tau(self) -> bool:
        return self.spec.learnable_global_tau

    @property
    def tau_grad_mode(self) -> str:
        """Old name of :attr:`fcco_mode`."""
        return self.fcco_mode

    @property
    def tau_rule(self):
        """The per-sample τ update rule (tau_updates.TauUpdateRule) of this version in this
        FCCO mode, None for a global τ."""
        if not self.individual_tau:
            return None
        return TAU_UPDATE_RULES[self.spec.tau_update_of(self.fcco_mode)]

    @property
    def shifted_u(self) -> bool:
        """RGCL in reference mode keeps the running-max shift bᵢ (columns ``u_shift_*``)."""
        return self.individual_tau and self.mode.rgcl_shifted_u

    @property
    def gamma(self) -> float:
        return self._gamma

    @gamma.setter
    def gamma(self, value: float):
        if not 0 < value <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {value}")
        self._gamma = float(value)

    def set_epoch(self, epoch: int) -> None:
        """The epoch, for v2's reference-mode Adam (betas 0 in epoch 0, bias correction by the
        epoch; docs/algorithm.md §3)."""
        self.epoch = int(epoch)

    def _state_columns(self) -> Dict[str, float]:
        columns = {name: -math.inf for name in column_names(["log_u"])}   # u = 0: never seen
        if self.individual_tau:
            columns.update({name: self.spec.temperature for name in column_names(["tau"])})
            columns.update({name: 0.0 for name in column_names(self.tau_rule.state_columns)})
        if self.shifted_u:
            columns.update({name: 0.0 for name in column_names(["u_shift"])})
        return columns

    def nbytes(self) -> int:
        return self.state.nbytes()

    def describe(self) -> str:
        spec = self.spec
        parts = [f"version={self.version} ({spec.objective}, {spec.temperature_scheme} tau; "
                 f"learned: {spec.learned_tau()})"]
        meaning = ("the stated objective's estimator" if self.fcco_mode == "exact" else
                   "the reference implementation's loss scale and gradients")
        parts.append(f"fcco_mode={self.fcco_mode} ({meaning})")
        if spec.objective != "GCL":
            parts.append(f"rho={spec.rho}")
        if self.individual_tau:
            parts.append(f"tau_init={spec.temperature} tau_range=[{spec.tau_min}, {spec.tau_max}]")
        parts.append(f"eps={self.eps} gamma={self.gamma} world_size={self.comm.world_size}")
        layout = (f"sharded, ids [{self.state.start}, {self.state.stop}) on this rank"
                  if self.state.sharded else "whole")
        parts.append(f"state={self.nbytes() / 2**20:.1f} MiB {self.state.dtype} "
                     f"on {self.state.device} for data_size={self.state.data_size} ({layout})")
        return ", ".join(parts)

    def extra_repr(self) -> str:
        return self.describe()

    # --------------------------------------------------------------- checkpointing
    def get_extra_state(self):
        return {"version": self.version, "state": self.state.state_dict()}

    def set_extra_state(self, extra):
        state = dict(extra["state"])
        state["columns"] = [RENAMED_COLUMNS.get(name, name) for name in state["columns"]]
        self.state.load_state_dict(state)

    # ---------------------------------------------------------------------- forward
    def forward(self, image_features, text_features, logit_scale, sample_ids,
                output_dict: bool = False):
        # autocast would silently run the similarity matmuls in bf16/fp16 again.
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            batch = gather_batch(self.comm, self.state, image_features, text_features, sample_ids)
            tau = (None if self.individual_tau else
                   global_tau(logit_scale, batch, self.learnable_global_tau))
            old = self.state.unpack(read_state(self.comm, self.state, batch, batch.image.device,
                                               batch.image.dtype))
            sides = self._sides(batch, tau, old)
            new_local, tau_gradients, log_eps_local = self._update_local_state(batch, sides, old)
            shared = share_state(self.comm, self.state, batch, new_local, old, self.individual_tau)
            log_eps_u = (log_eps_local if self.comm.world_size == 1 else
                         {name: self._log_eps_plus(shared, name) for name in SIDES})
            surrogate = self._surrogate(batch, sides, tau, shared, log_eps_u)
            objective = self._objective_estimate(tau, old, log_eps_local)
        loss = surrogate + (objective - surrogate).detach()
        if not output_dict:
            return loss
        return {"contrastive_loss": loss, **diagnostics(self.gamma, tau, old, new_local,
                                                        tau_gradients, self.individual_tau)}

    @property
    def single_block(self) -> bool:
        """One process needs no anchor/negative split: one (b, b) block with the gradient live
        through both modalities is the whole surrogate, so the negative part (a second matmul
        and two more exp blocks) is skipped. Not when the reference mode counts a global τ twice
        or gives the negative part other per-sample τ than the anchor part."""
        doubled_tau = self.learnable_global_tau and self.mode.global_tau_in_negative_part
        other_tau = self.individual_tau and self.mode.rgcl_negative_tau_updated
        return self.comm.world_size == 1 and not (doubled_tau or other_tau)

    def _log_eps_plus(self, columns, name, shift_column="u_shift"):
        """log(ε+u) of one side from state columns (the shifted form for reference RGCL)."""
        shift = columns[f"{shift_column}_{name}"] if self.shifted_u else None
        return log_eps_plus(columns[f"log_u_{name}"], self.eps, shift)

    def _sides(self, batch: _Batch, tau, old) -> Dict[str, _Side]:
        if self.single_block:
            image_vs_all_text = batch.image @ batch.text.T   # (b, b), gradient → both sides
            text_vs_all_image = image_vs_all_text.T
            positives = image_vs_all_text.diagonal()[:, None]
        else:
            image_vs_all_text = batch.image @ batch.all_text.T   # (b, N), gradient → local images
            text_vs_all_image = batch.text @ batch.all_image.T   # (b, N), gradient → local texts
            positives = (batch.image * batch.text).sum(1, keepdim=True)   # live in both
        mask = batch.positive_mask
        n_negatives = batch.global_size - 1
        sides = {}
        for name, anchor_sim, negative_sim in (("image", image_vs_all_text, text_vs_all_image),
                                               ("text", text_vs_all_image, image_vs_all_text)):
            side_tau = old[f"tau_{name}"][:, None] if self.individual_tau else tau
            logits = ((anchor_sim - positives) / side_tau).masked_fill(mask, -math.inf)
            log_g = torch.logsumexp(logits.detach(), dim=1) - math.log(n_negatives)
            sides[name] = _Side(name, anchor_sim, negative_sim, logits, log_g)
        return sides

    # ---------------------------------------------------------------- state updates
    def _update_local_state(self, batch: _Batch, sides, old):
        """New state columns for the local ids (u, and τ with its rule's state for RGCL), the
        clipped τ gradients (RGCL) and log(ε+u) of the new u by side."""
        new, tau_gradients, log_eps_local = {}, {}, {}
        for name, side in sides.items():
            reset_shift = None
            if self.shifted_u:   # the reference's running max bᵢ of zᵢⱼ, from 0
                reset_shift = old[f"u_shift_{name}"]
                new[f"u_shift_{name}"] = torch.maximum(reset_shift,
                                                       side.logits.detach().amax(dim=1))
            new[f"log_u_{name}"] = log_moving_average(old[f"log_u_{name}"], side.log_g,
                                                      self.gamma, reset_shift)
            log_eps_local[name] = self._log_eps_plus(new, name)
            if self.individual_tau:
                tau_gradients[name] = clip_tau_gradient(rgcl_tau_gradient(
                    side.logits.detach(), log_eps_local[name], self.spec.rho, batch.positive_mask))
                new.update(self._tau_step(name, tau_gradients[name], old))
        return new, tau_gradients, log_eps_local

    def _tau_step(self, name: str, tau_gradients, old) -> Dict[str, torch.Tensor]:
        """One step of the version's per-sample τ rule on one side's rows."""
        rule, spec = self.tau_rule, self.spec
        available = {"betas": self.tau_betas, "eps": self.tau_eps, "epoch": self.epoch}
        columns = [f"{column}_{name}" for column in rule.state_columns]
        tau, *rule_state = rule.update(
            old[f"tau_{name}"], tau_gradients, *(old[c] for c in columns), lr=self.lr_tau,
            tau_min=spec.tau_min, tau_max=spec.tau_max, **{k: available[k] for k in rule.options})
        return {f"tau_{name}": tau, **dict(zip(columns, rule_state))}

    # -------------------------------------------------------------------- surrogate
    def _surrogate(self, batch: _Batch, sides, tau, shared, log_eps_u) -> torch.Tensor:
        """log_eps_u: log(ε+u) by side for the whole global batch (N,), after this step's update."""
        n_negatives = batch.global_size - 1
        local = slice(batch.offset, batch.offset + batch.local_size)
        all_positives = None if self.single_block else (batch.all_image * batch.all_text).sum(1)
        total = 0.0
        for name, side in sides.items():
            coef, negative_tau = self._side_coefficients(name, tau, shared)
            anchor_terms = torch.exp(side.logits - log_eps_u[name][local, None]).sum(1)
            parts = _weighted_sum(anchor_terms, coef, local)
            if not self.single_block:
                # Columns are anchors k of this side, rows the local negatives; all but them is
                # fixed (the anchors' features, positives, u and τ).
                negative_logits = (side.negative_sim - all_positives[None, :]) / negative_tau
                negative_terms = torch.exp(negative_logits.masked_fill(
                    batch.positive_mask, -math.inf) - log_eps_u[name][None, :]).sum(0)
                parts = parts + _weighted_sum(negative_terms, coef, slice(None))
            total = total + parts / (n_negatives * batch.local_size)
        if self.spec.objective == "RGCL-g":
            log_u = (log_eps_u if self.mode.rgcl_g_log_u_eps else
                     {name: shared[f"log_u_{name}"] for name in SIDES})
            log_u_local = log_u["image"][local] + log_u["text"][local]
            total = total + tau * (log_u_local.mean() + 2 * self.spec.rho)
        return self.mode.surrogate_scale * total

    def _side_coefficients(self, name, tau, shared):
        """Per-anchor prefactor (None for 1, a scalar or an (N,) tensor) and the τ of the
        negative part for one side."""
        if self.individual_tau:
            used_tau = shared[f"used_tau_{name}"]
            negative_tau = (shared[f"tau_{name}"] if self.mode.rgcl_negative_tau_updated
                            else used_tau)
            return (used_tau if self.mode.rgcl_tau_prefactor else None), negative_tau[None, :]
        # exact: a global τ gets its gradient once, from the anchor part only.
        live_in_negatives = self.learnable_global_tau and self.mode.global_tau_in_negative_part
        negative_tau = tau if live_in_negatives else tau.detach()
        coef = tau.detach() if self.spec.objective == "RGCL-g" else None
        return coef, negative_tau

    def _objective_estimate(self, tau, old, log_eps_local) -> torch.Tensor:
        """The objective with g→u on the local anchors (the value the loss reports)."""
        total = 0.0
        for name, log_eps_u in log_eps_local.items():
            if self.spec.objective == "GCL":
                total = total + log_eps_u.mean()
            elif self.spec.objective == "RGCL":
                total = total + (old[f"tau_{name}"] * (log_eps_u + self.spec.rho)).mean()
            else:
                total = total + tau * (log_eps_u.mean() + self.spec.rho)
        return total.detach()
