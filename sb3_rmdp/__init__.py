"""sb3-rmdp: personalized reinforcement learning under a budget of policies, for Stable-Baselines3.

A represented MDP (r-MDP) has one dynamics, ``n_agents`` agents with their own rewards and ``k``
representatives, each running one policy; agents are assigned to representatives to maximize the
social welfare. ``RMDPPPO("MlpPolicy", env, k=5).learn(2e6)`` trains the k policies and the assignment.
"""

from typing import Any

from sb3_rmdp import envs  # registers the built-in environments
from sb3_rmdp.a2c import RMDPA2C
from sb3_rmdp.aggregate import RMDPAggregateRolloutBuffer
from sb3_rmdp.algorithms import ALGORITHMS, algorithm_class, load_model
from sb3_rmdp.assigners import (
    Assigner,
    CoverageAssigner,
    EMAssigner,
    EndToEndAssigner,
    FixedAssigner,
    KMeansAssigner,
    OracleAssigner,
    RandomAssigner,
)
from sb3_rmdp.buffers import RMDPRolloutBuffer
from sb3_rmdp.export import export_representative, review_dossier
from sb3_rmdp.policies import MlpPolicy, MultiRepresentativePolicy
from sb3_rmdp.ppo import RMDPPPO
from sb3_rmdp.welfare import (
    best_assignment,
    egalitarian_welfare,
    evaluate_agent_returns,
    nash_welfare,
    utilitarian_welfare,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The sb3-contrib algorithms are imported on first use: sb3-contrib is an extra ("contrib").
    if name in ("RMDPMaskablePPO", "RMDPRecurrentPPO"):
        return algorithm_class(name)
    raise AttributeError(f"module 'sb3_rmdp' has no attribute {name!r}")


__all__ = [
    "ALGORITHMS",
    "RMDPA2C",
    "RMDPPPO",
    "Assigner",
    "CoverageAssigner",
    "EMAssigner",
    "EndToEndAssigner",
    "FixedAssigner",
    "KMeansAssigner",
    "MlpPolicy",
    "MultiRepresentativePolicy",
    "OracleAssigner",
    "RMDPAggregateRolloutBuffer",
    "RMDPMaskablePPO",
    "RMDPRecurrentPPO",
    "RMDPRolloutBuffer",
    "RandomAssigner",
    "__version__",
    "algorithm_class",
    "best_assignment",
    "egalitarian_welfare",
    "envs",
    "evaluate_agent_returns",
    "export_representative",
    "load_model",
    "nash_welfare",
    "review_dossier",
    "utilitarian_welfare",
]
