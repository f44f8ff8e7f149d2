"""Preference populations: any MO-Gymnasium env as an r-MDP of ``n_agents`` users with linear preferences.

Agent i weighs the env's reward vector ``r_vec`` ``(d,)`` by its own preference ``w_i`` ``(d,)`` drawn
from a Dirichlet distribution by the population's own generator, and gets ``w_i . r_vec`` per step.
``agent_params`` are the weights ``(n_agents, d)``; read them with
:func:`sb3_rmdp.envs.agent_params_of` (``gym.make`` wraps the env, and gymnasium's wrappers do not
forward custom attributes). Without a population, an MO-Gymnasium env already
is an r-MDP with one agent per objective (``n_agents = d``): pass it to :class:`~sb3_rmdp.RMDPPPO`
directly.

Registered as ``sb3_rmdp/Preference-v0`` (``gym.make("sb3_rmdp/Preference-v0", mo_env="mo-halfcheetah-v5",
n_agents=100, seed=0)``).
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_rmdp.envs.contract import reward_space_of
from sb3_rmdp.envs.velocity import _quiet_known_mujoco_warnings


def dirichlet_preferences(
    n_agents: int, n_objectives: int, concentration: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Preference weights ``(n_agents, n_objectives)``, rows on the simplex, from their own generator.

    :param concentration: the symmetric Dirichlet parameter (1: uniform over the simplex).
    """
    if n_agents < 1:
        raise ValueError(f"n_agents={n_agents}: a population needs at least one agent.")
    if concentration <= 0:
        raise ValueError(f"concentration={concentration}: the Dirichlet parameter must be positive.")
    return np.random.default_rng(seed).dirichlet(np.full(n_objectives, float(concentration)), size=n_agents)


class PreferencePopulation(gym.Wrapper):
    """An r-MDP over a multi-objective env: agent i's reward is ``weights[i] . r_vec``.

    :param env: a multi-objective env (MO-Gymnasium's convention: ``step`` returns a reward vector
        ``(d,)`` and ``unwrapped.reward_space`` is a ``Box`` of that shape).
    :param n_agents: population size (ignored if ``weights`` is given).
    :param seed: seed of the preferences' generator.
    :param concentration: symmetric Dirichlet parameter of the preferences.
    :param weights: explicit preferences ``(n_agents, d)`` instead of drawing them.
    """

    def __init__(
        self,
        env: gym.Env,
        n_agents: int = 100,
        seed: int = 0,
        concentration: float = 1.0,
        weights: np.ndarray | None = None,
    ):
        super().__init__(env)
        objectives = reward_space_of(env)
        n_objectives = int(objectives.shape[0])
        if weights is None:
            weights = dirichlet_preferences(n_agents, n_objectives, concentration, seed)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[1] != n_objectives or len(weights) < 1:
            raise ValueError(
                f"weights of shape {weights.shape} do not fit {env.unwrapped.__class__.__name__}, whose "
                f"reward vector has {n_objectives} objectives: "
                f"pass weights of shape (n_agents, {n_objectives})."
            )
        if not np.all(np.isfinite(weights)):
            raise ValueError("weights contain NaN or inf: every preference must be finite.")
        self.weights = weights
        self.n_agents = len(weights)
        self.agent_params = weights
        # Bounds of w . r over the objectives' box: each term lies between w*low and w*high (0 where w = 0).
        with np.errstate(invalid="ignore"):
            ends = np.stack([weights * objectives.low, weights * objectives.high])
        ends = np.where(weights == 0, 0.0, ends)
        self.reward_space = spaces.Box(
            ends.min(axis=0).sum(axis=1).astype(np.float32),
            ends.max(axis=0).sum(axis=1).astype(np.float32),
            dtype=np.float32,
        )

    def step(self, action: Any) -> tuple[Any, np.ndarray, bool, bool, dict[str, Any]]:
        obs, reward_vector, terminated, truncated, info = self.env.step(action)
        rewards = (self.weights @ np.asarray(reward_vector, dtype=np.float64)).astype(np.float32)
        return obs, rewards, terminated, truncated, info


def make_mo_env(mo_env: str, **kwargs: Any) -> gym.Env:
    """``mo_gymnasium.make(mo_env)`` with a clear error for unknown ids (MuJoCo's known warning silenced)."""
    try:
        import mo_gymnasium
    except ImportError as error:  # pragma: no cover - the extra is part of `dev`
        raise ImportError("Preference populations need MO-Gymnasium: pip install 'sb3-rmdp[mo]'.") from error
    try:
        with _quiet_known_mujoco_warnings(), warnings.catch_warnings():
            # MO-Gymnasium declares its reward spaces in float64; gymnasium casts them, harmlessly.
            warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
            return mo_gymnasium.make(mo_env, **kwargs)
    except gym.error.Error as error:
        raise ValueError(
            f"Unknown MO-Gymnasium env {mo_env!r} ({error}). Use an id MO-Gymnasium registers, e.g. "
            "'mo-halfcheetah-v5' or 'resource-gathering-v0' (list them with "
            "`[i for i in gymnasium.registry if i.startswith('mo-')]` after `import mo_gymnasium`)."
        ) from error


def make_preference_env(
    mo_env: str,
    n_agents: int = 100,
    seed: int = 0,
    concentration: float = 1.0,
    weights: np.ndarray | None = None,
    **kwargs: Any,
) -> PreferencePopulation:
    """``sb3_rmdp/Preference-v0``: a preference population over the MO-Gymnasium env ``mo_env``.

    :param kwargs: keyword arguments for the MO-Gymnasium env.
    """
    return PreferencePopulation(make_mo_env(mo_env, **kwargs), n_agents, seed, concentration, weights)
