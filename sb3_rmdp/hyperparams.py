"""Tuned hyperparameters per environment, in the spirit of rl-zoo3's ``hyperparams/*.yml``.

``RMDPPPO("MlpPolicy", env_id, k=3, **hyperparams_for(env_id))`` trains with settings that were
measured to work (see ``benchmarks/``). Every entry is a plain ``RMDPPPO`` keyword argument, except
``assigner_kwargs``, which :func:`hyperparams_for` turns into the default ``EMAssigner``.
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.utils import LinearSchedule

from sb3_rmdp.assigners import EMAssigner

HYPERPARAMS: dict[str, dict[str, Any]] = {
    # The paper's settings (gamma = 1, entropy bonus, lr 5e-4 -> 1e-4, rewards / 100) with shorter
    # rollouts and larger minibatches: 512 steps per representative per update, so E-steps come 4x as
    # often as with 2048, and 60 gradient steps per update instead of 960.
    "sb3_rmdp/ResourceGathering-v0": {
        "n_steps": 512,
        "batch_size": 256,
        "n_epochs": 10,
        "gamma": 1.0,
        "gae_lambda": 0.95,
        "ent_coef": 0.01,
        "learning_rate": LinearSchedule(5e-4, 1e-4, 1.0),
        "env_kwargs": {"reward_scale": 0.01},
        "assigner_kwargs": {"mixing": 0.05, "warm_start_updates": 10},
    },
}
# The masked variant has the same task: the same settings (for RMDPMaskablePPO).
HYPERPARAMS["sb3_rmdp/MaskedResourceGathering-v0"] = HYPERPARAMS["sb3_rmdp/ResourceGathering-v0"]


def hyperparams_for(env_id: str) -> dict[str, Any]:
    """``RMDPPPO`` keyword arguments for ``env_id`` (with a fresh ``EMAssigner``).

    :raises ValueError: for an env without tuned settings, listing those that have them.
    """
    if env_id not in HYPERPARAMS:
        raise ValueError(f"No tuned hyperparameters for {env_id!r}; known: {sorted(HYPERPARAMS)}.")
    params = dict(HYPERPARAMS[env_id])
    params["env_kwargs"] = dict(params.get("env_kwargs", {}))
    params["assigner"] = EMAssigner(**params.pop("assigner_kwargs", {}))
    return params
