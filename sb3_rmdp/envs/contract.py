"""The r-MDP environment contract and the wrapper that carries reward vectors through SB3.

An r-MDP environment is a :class:`gymnasium.Env` whose ``step`` returns a reward **vector** of shape
``(n_agents,)`` and whose ``unwrapped.reward_space`` is a :class:`gymnasium.spaces.Box` of that shape
(MO-Gymnasium's convention, so every MO-Gymnasium env is an r-MDP with ``n_agents`` = reward
dimension). It may expose ``agent_params``: an array ``(n_agents, d)`` describing each agent.

SB3's VecEnvs and Monitor carry scalar rewards only, so :class:`AgentRewardsWrapper` makes the
scalar reward the mean over agents and moves the vector into ``info["agent_rewards"]``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

AGENT_REWARDS_KEY = "agent_rewards"
#: info key of an env with *compact rewards*: one per-step statistic (e.g. the forward speed) of which every
#: agent's reward is a function, in place of the reward vector (see :class:`AgentRewardsWrapper`)
AGENT_REWARD_STATISTIC_KEY = "agent_reward_statistic"


def reward_space_of(env: gym.Env) -> spaces.Box:
    """Return the reward space ``Box(n_agents,)`` of an r-MDP env, or raise a ``ValueError`` naming the fix.

    :param env: a gymnasium env (wrapped or not).
    :return: the ``Box`` of shape ``(n_agents,)``.
    """
    reward_space = _find_attr(env, "reward_space")
    if reward_space is None:
        raise ValueError(
            f"{env.unwrapped.__class__.__name__} is not an r-MDP env: it has no `reward_space`. "
            "An r-MDP env returns a reward vector of shape (n_agents,) from `step` and declares "
            "`self.reward_space = gymnasium.spaces.Box(low, high, shape=(n_agents,))` "
            "(MO-Gymnasium's convention). For a scalar-reward env with one agent, wrap it in "
            "`sb3_rmdp.envs.SingleAgentRMDP(env)`."
        )
    if not isinstance(reward_space, spaces.Box) or len(reward_space.shape) != 1:
        raise ValueError(
            f"`reward_space` of {env.unwrapped.__class__.__name__} must be a 1-D gymnasium Box of shape "
            f"(n_agents,), got {reward_space!r}. Declare one reward entry per agent."
        )
    return reward_space


def n_agents_of(env: gym.Env) -> int:
    """Number of agents of an r-MDP env: the length of its reward space."""
    return int(reward_space_of(env).shape[0])


def agent_params_of(env: gym.Env) -> np.ndarray | None:
    """Agent parameters ``(n_agents, d)`` of an env, if it declares them (``None`` otherwise)."""
    params = _find_attr(env, "agent_params")
    if params is None:
        return None
    params = np.asarray(params, dtype=np.float64)
    return params.reshape(len(params), -1)


def check_agent_rewards(agent_rewards: Any, n_agents: int, source: str = "step") -> np.ndarray:
    """Validate one reward vector and return it as ``float32`` ``(n_agents,)``.

    :raises ValueError: on a scalar, a vector of the wrong shape, or a non-finite entry.
    """
    with np.errstate(over="ignore"):  # an overflow to inf is reported below, with its cause
        rewards = np.asarray(agent_rewards, dtype=np.float32)
    if rewards.shape != (n_agents,):
        raise ValueError(
            f"The env's `{source}` returned a reward of shape {rewards.shape}, but its `reward_space` "
            f"declares {n_agents} agents: return one reward per agent, shape ({n_agents},)."
        )
    if not np.all(np.isfinite(rewards)):
        exact = np.asarray(agent_rewards, dtype=np.float64)
        overflow = np.flatnonzero(np.isfinite(exact) & ~np.isfinite(rewards))
        if len(overflow):
            raise ValueError(
                f"The env's `{source}` returned rewards too large for float32 (the rollout buffer's type, "
                f"largest {np.finfo(np.float32).max:.3g}) for agents {overflow.tolist()}, e.g. "
                f"{exact[overflow[0]]:.6g}: they are finite, but become inf in float32. Scale the rewards "
                "down (e.g. a reward_scale env kwarg or a reward wrapper); a critic fits returns of order "
                "1-100 best."
            )
        bad = np.flatnonzero(~np.isfinite(rewards))
        raise ValueError(
            f"The env's `{source}` returned a non-finite reward (NaN or inf) for agents {bad.tolist()}: "
            "fix the env's reward function; PPO cannot learn from NaN rewards."
        )
    return rewards


class AgentRewardsWrapper(gym.Wrapper):
    """Make an r-MDP env look like a scalar-reward env to SB3, without losing the reward vector.

    ``step`` returns the mean of the agents' rewards as the scalar reward (so Monitor's episode return
    is the average agent's return) and puts the vector ``(n_agents,)`` in ``info["agent_rewards"]``.
    ``reset`` and everything else pass through. Apply it before any VecEnv.

    An env with compact rewards (e.g. ``VelocityPopulation(compact_rewards=True)``) returns the agents'
    mean reward as its scalar reward and puts one per-step statistic in ``info["agent_reward_statistic"]``
    instead of the vector; it has a method ``rewards_from_statistics(statistics)`` mapping ``(m,)``
    statistics to ``(m, n_agents)`` float32 rewards, which the algorithm calls once per step for all env
    slots (:func:`agent_rewards_of`). Such a step passes through unchanged.

    :param env: an r-MDP env (reward vector of shape ``(n_agents,)``; see the module docstring).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.n_agents = n_agents_of(env)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if AGENT_REWARD_STATISTIC_KEY in info:  # compact rewards: `reward` is the agents' mean already
            return obs, float(reward), terminated, truncated, info
        agent_rewards = check_agent_rewards(reward, self.n_agents)
        info[AGENT_REWARDS_KEY] = agent_rewards
        return obs, float(agent_rewards.mean()), terminated, truncated, info


class SingleAgentRMDP(gym.Wrapper):
    """View a scalar-reward env as an r-MDP with one agent (``reward_space = Box(1,)``).

    With ``k=1`` this is how stock SB3 tasks (``CartPole-v1``, ``Pendulum-v1``) run through
    :class:`~sb3_rmdp.RMDPPPO`, which then reproduces SB3's PPO exactly.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.reward_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)

    def step(self, action: Any) -> tuple[Any, np.ndarray, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, np.array([reward], dtype=np.float32), terminated, truncated, info


def _find_attr(env: gym.Env, name: str) -> Any:
    """The outermost value of ``name`` along a wrapper chain (gymnasium 1.x wrappers do not forward it)."""
    current: gym.Env = env
    while True:
        value = vars(current).get(name)
        if value is not None:
            return value
        if not isinstance(current, gym.Wrapper):
            return getattr(current, name, None)
        current = current.env


# each VecEnv's `rewards_from_statistics`, looked up once (a SubprocVecEnv sends a copy of env 0's)
_STATISTIC_REWARDS: weakref.WeakKeyDictionary[Any, Callable[[np.ndarray], np.ndarray]] = (
    weakref.WeakKeyDictionary()
)


def agent_rewards_of(infos: list[dict[str, Any]], vec_env: Any = None) -> np.ndarray:
    """The agents' rewards of one step of every slot, ``(n_envs, n_agents)`` float32 (a fresh array).

    From ``info["agent_rewards"]``, or, for an env with compact rewards (``info["agent_reward_statistic"]``,
    see :class:`~sb3_rmdp.envs.AgentRewardsWrapper`), from the env's ``rewards_from_statistics`` applied to
    every slot's statistic at once.

    :raises KeyError: if an info carries neither.
    """
    if vec_env is not None and AGENT_REWARD_STATISTIC_KEY in infos[0]:
        rewards_of = _STATISTIC_REWARDS.get(vec_env)
        if rewards_of is None:
            rewards_of = vec_env.get_attr("rewards_from_statistics", indices=[0])[0]
            _STATISTIC_REWARDS[vec_env] = rewards_of
        statistics = np.array([info[AGENT_REWARD_STATISTIC_KEY] for info in infos])
        return np.asarray(rewards_of(statistics), dtype=np.float32)
    return np.stack([info[AGENT_REWARDS_KEY] for info in infos]).astype(np.float32, copy=False)
