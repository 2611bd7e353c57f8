"""Array-level learned MM solver (pure torch, no MNE)."""

from .bounds import (
    analytic_nu_hi,
    cosine_curvature,
    hessian_bound,
    hessian_power_iteration,
    hvp_nu_hi,
    operator_norm_sq,
)
from .init import initial_point
from .majorant import (
    ConvLSTMCell,
    CurvatureConfig,
    CurvatureNet,
    CurvatureState,
    SpatialBasis,
    project_curvature,
    reference_inverse_curvature,
    rms_normalize,
)
from .mm import BOUNDS, LearnedMM, MMConfig, SolverHistory, split_solver_config
from .objective import (
    cosine_similarity,
    cost_and_grad,
    data_fidelity,
    lower_cost,
    lower_cost_terms,
    prior_penalty,
    upper_loss,
)
from .prior import ConvAutoencoder, PriorConfig, SoftReLU, conv_norm_bound, conv_operator_norm
from .unrolled import GradientModulator, UnrolledSolver

__all__ = [
    "BOUNDS",
    "ConvAutoencoder",
    "ConvLSTMCell",
    "CurvatureConfig",
    "CurvatureNet",
    "CurvatureState",
    "GradientModulator",
    "LearnedMM",
    "MMConfig",
    "PriorConfig",
    "SoftReLU",
    "SolverHistory",
    "SpatialBasis",
    "UnrolledSolver",
    "analytic_nu_hi",
    "conv_norm_bound",
    "conv_operator_norm",
    "cosine_curvature",
    "cosine_similarity",
    "cost_and_grad",
    "data_fidelity",
    "hessian_bound",
    "hessian_power_iteration",
    "hvp_nu_hi",
    "initial_point",
    "lower_cost",
    "lower_cost_terms",
    "operator_norm_sq",
    "prior_penalty",
    "project_curvature",
    "reference_inverse_curvature",
    "rms_normalize",
    "split_solver_config",
    "upper_loss",
]
