"""Policy committees (PACMAN): epsilon-cover clustering of agent params and prototype populations."""

from sb3_rmdp.committee.baselines import (
    CLUSTERING_METHODS,
    EPSILON_METHODS,
    Clustering,
    cluster_agents,
    nearest_prototype,
)
from sb3_rmdp.committee.cover import (
    CoverResult,
    assign_to_prototypes,
    centre_on_agents,
    epsilon_cover,
    linf_distances,
)
from sb3_rmdp.committee.gradient import gradient_prototypes
from sb3_rmdp.committee.greedy import candidate_boxes, greedy_max_coverage, greedy_prototypes
from sb3_rmdp.committee.prototypes import population_with_agents, prototype_population

__all__ = [
    "CLUSTERING_METHODS",
    "EPSILON_METHODS",
    "Clustering",
    "CoverResult",
    "assign_to_prototypes",
    "candidate_boxes",
    "centre_on_agents",
    "cluster_agents",
    "epsilon_cover",
    "gradient_prototypes",
    "greedy_max_coverage",
    "greedy_prototypes",
    "linf_distances",
    "nearest_prototype",
    "population_with_agents",
    "prototype_population",
]
