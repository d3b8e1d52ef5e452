"""The FastCLIP versions as data: one frozen record per version, the only table of them.

    python -c "from open_clip_patch.versions import VERSIONS; print(*VERSIONS.items(), sep='\\n')"

Each record says what a version optimises and how its temperature is held (docs/algorithm.md §1,
§3, §4, §7). ``open_clip_patch.params`` fills the flags a run leaves unset from it (an explicit flag
wins) and ``open_clip_patch.losses`` reads it for what no flag sets (the per-sample τ rule and
bounds). :meth:`Version.with_overrides` gives the effective configuration of a run.
"""
from dataclasses import dataclass, replace
from typing import Dict, Optional

OBJECTIVES = ("GCL", "RGCL", "RGCL-g")
# How τ is held: one frozen global τ, one learned global τ (the logit scale), one per sample.
TEMPERATURE_SCHEMES = ("global-constant", "global-learnable", "individual-learnable")
# The schemes each objective can be optimised with: RGCL's τᵢ live in the loss, one per sample;
# GCL and RGCL-g read one τ from the logit scale, frozen or learned.
SCHEMES_OF_OBJECTIVE = {
    "GCL": ("global-constant", "global-learnable"),
    "RGCL": ("individual-learnable",),
    "RGCL-g": ("global-constant", "global-learnable"),
}


@dataclass(frozen=True)
class FccoMode:
    """What an FCCO mode changes in the loss (docs/algorithm.md §3, §9). "exact" computes the
    stated objective's estimator; "reference" reproduces the reference implementation, under
    which the published ρ, lr_τ and lr were tuned."""
    surrogate_scale: float            # per-rank surrogate factor: reference ½[anchor + negative]
    global_tau_in_negative_part: bool  # learned global τ live in the negative part too (τ·∂g twice)
    rgcl_tau_prefactor: bool          # RGCL surrogate τᵢ·gᵢ/(ε+uᵢ) (exact) or gᵢ/(ε+uᵢ)
    rgcl_shifted_u: bool              # RGCL: ε and the 1e-35 reset act on u·e^(−bᵢ) (bᵢ running max)
    rgcl_negative_tau_updated: bool   # RGCL negative part with the τ after this step's update
    rgcl_g_log_u_eps: bool            # RGCL-g's τ term takes log(ε+u) (exact) or log u


FCCO_MODES: Dict[str, FccoMode] = {
    "exact": FccoMode(surrogate_scale=1.0, global_tau_in_negative_part=False,
                      rgcl_tau_prefactor=True, rgcl_shifted_u=False,
                      rgcl_negative_tau_updated=False, rgcl_g_log_u_eps=True),
    "reference": FccoMode(surrogate_scale=0.5, global_tau_in_negative_part=True,
                          rgcl_tau_prefactor=False, rgcl_shifted_u=True,
                          rgcl_negative_tau_updated=True, rgcl_g_log_u_eps=False),
}
# The flag's choices (--fcco-mode; --tau-grad is its old name).
TAU_GRAD_MODES = tuple(FCCO_MODES)


@dataclass(frozen=True)
class Version:
    objective: str                  # one of OBJECTIVES
    temperature_scheme: str         # one of TEMPERATURE_SCHEMES
    temperature: float              # τ₀: the global τ (logit scale) or every per-sample τ
    rho: float                      # KL-DRO radius ρ of RGCL / RGCL-g (0 for GCL)
    lr_tau: Optional[float]         # step size of τ; None: the model's --lr
    lr_tau_scheduler: str           # schedule of a learned global τ's lr (schedules.py)
    gamma_schedule: str             # "cosine" | "constant" (schedules.GammaSchedule)
    gamma_min: float                # final γ of u ← (1-γ)u + γg
    tau_update: Optional[str] = None    # per-sample τ rule (tau_updates.TAU_UPDATE_RULES)
    reference_tau_update: Optional[str] = None   # its rule in reference mode (None: the same)
    tau_min: float = 0.01           # clamp of the per-sample τ
    tau_max: float = 1.0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.temperature_scheme not in SCHEMES_OF_OBJECTIVE[self.objective]:
            raise ValueError(scheme_mismatch(self.objective, self.temperature_scheme))
        if (self.tau_update is not None) != self.individual_tau:
            raise ValueError(f"a per-sample τ rule goes with individual-learnable τ only, got "
                             f"tau_update={self.tau_update!r} for {self.temperature_scheme}")

    @property
    def individual_tau(self) -> bool:
        return self.temperature_scheme == "individual-learnable"

    @property
    def learnable_global_tau(self) -> bool:
        return self.temperature_scheme == "global-learnable"

    def with_overrides(self, **overrides) -> "Version":
        """This version with the given fields replaced (None leaves a field as it is)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def tau_update_of(self, mode: str) -> Optional[str]:
        """The per-sample τ rule in FCCO mode ``mode`` (None for a global τ)."""
        if mode == "reference" and self.reference_tau_update is not None:
            return self.reference_tau_update
        return self.tau_update

    def learned_tau(self) -> str:
        """What this configuration learns of τ, in words (for the log)."""
        if self.individual_tau:
            return f"per-sample tau, {self.tau_update} rule, lr {self.lr_tau}"
        if self.learnable_global_tau:
            lr = "the model's --lr" if self.lr_tau is None else self.lr_tau
            return f"global tau (logit scale), lr {lr}"
        return f"nothing: tau frozen at {self.temperature}"


def scheme_mismatch(objective: str, scheme: str) -> str:
    """Why ``scheme`` cannot optimise ``objective`` (one line)."""
    return (f"{objective} needs temperature scheme {' or '.join(SCHEMES_OF_OBJECTIVE[objective])}, "
            f"not {scheme}")


# docs/algorithm.md §3 (temperatures), §4 (γ schedules), §7 (published settings).
VERSIONS: Dict[str, Version] = {
    "v0": Version("GCL", "global-learnable", temperature=0.07, rho=0.0, lr_tau=None,
                  lr_tau_scheduler="cosine", gamma_schedule="cosine", gamma_min=0.2),
    "v1": Version("GCL", "global-constant", temperature=0.07, rho=0.0, lr_tau=None,
                  lr_tau_scheduler="cosine", gamma_schedule="cosine", gamma_min=0.2),
    "v2": Version("RGCL", "individual-learnable", temperature=0.03, rho=7.0, lr_tau=0.0133,
                  lr_tau_scheduler="const", gamma_schedule="cosine", gamma_min=0.2,
                  tau_update="adam", reference_tau_update="adam-reference"),
    "v3": Version("RGCL-g", "global-learnable", temperature=0.07, rho=6.5, lr_tau=2e-4,
                  lr_tau_scheduler="step-thresh", gamma_schedule="cosine", gamma_min=0.2),
    "sogclr": Version("GCL", "global-constant", temperature=0.07, rho=0.0, lr_tau=None,
                      lr_tau_scheduler="const", gamma_schedule="constant", gamma_min=0.9),
    "isogclr": Version("RGCL", "individual-learnable", temperature=0.01, rho=6.0, lr_tau=0.01,
                       lr_tau_scheduler="const", gamma_schedule="constant", gamma_min=0.9,
                       tau_update="moving-average", tau_min=0.005, tau_max=0.05),
}
