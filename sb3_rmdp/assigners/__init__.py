"""Assignment algorithms: SB3 callbacks that own the assignment of agents to representatives."""

from sb3_rmdp.assigners.base import Assigner
from sb3_rmdp.assigners.coverage import CoverageAssigner
from sb3_rmdp.assigners.em import EMAssigner, best_response, e_step, mix_returns
from sb3_rmdp.assigners.end_to_end import EndToEndAssigner
from sb3_rmdp.assigners.fixed import (
    FixedAssigner,
    OracleAssigner,
    RandomAssigner,
    equal_width_bins,
    random_even_assignment,
)
from sb3_rmdp.assigners.kmeans import KMeansAssigner, kmeans_assignment

ASSIGNERS: dict[str, type[Assigner]] = {
    "em": EMAssigner,
    "end_to_end": EndToEndAssigner,
    "kmeans": KMeansAssigner,
    "random": RandomAssigner,
    "oracle": OracleAssigner,
    "coverage": CoverageAssigner,  # needs epsilon: by name it raises, naming the fix
}


def make_assigner(assigner: Assigner | str | None) -> Assigner:
    """An assigner from an instance, a name (``"em"``, ``"random"``) or ``None`` (EM with defaults)."""
    if assigner is None:
        return EMAssigner()
    if isinstance(assigner, Assigner):
        return assigner
    if isinstance(assigner, str) and assigner in ASSIGNERS:
        return ASSIGNERS[assigner]()
    raise ValueError(
        f"Unknown assigner {assigner!r}: pass an Assigner instance (e.g. EMAssigner(mixing=0.05)) "
        f"or one of the names {sorted(ASSIGNERS)}."
    )


__all__ = [
    "ASSIGNERS",
    "Assigner",
    "CoverageAssigner",
    "EMAssigner",
    "EndToEndAssigner",
    "FixedAssigner",
    "KMeansAssigner",
    "OracleAssigner",
    "RandomAssigner",
    "best_response",
    "e_step",
    "equal_width_bins",
    "kmeans_assignment",
    "make_assigner",
    "mix_returns",
    "random_even_assignment",
]
