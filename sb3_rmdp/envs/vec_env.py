"""Vectorized r-MDP envs: each env wrapped by ``AgentRewardsWrapper`` (and Monitor), then an SB3 VecEnv."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sb3_rmdp.envs.contract import AgentRewardsWrapper, agent_params_of, reward_space_of

EnvLike = str | gym.Env | Callable[..., gym.Env] | VecEnv


def make_rmdp_vec_env(
    env: str | gym.Env | Callable[..., gym.Env],
    n_envs: int = 1,
    seed: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    vec_env_cls: Callable[..., VecEnv] | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
    monitor: bool = True,
) -> VecEnv:
    """A VecEnv of ``n_envs`` r-MDP env slots, ready for ``RMDPPPO``: SB3's ``make_vec_env``, r-MDP aware.

    Each slot is ``Monitor(AgentRewardsWrapper(env))``: the scalar reward SB3 sees is the agents' mean,
    the vector travels in ``info["agent_rewards"]``. Wrap the result in ``VecNormalize(norm_reward=False)``
    or ``VecMonitor`` as usual.

    :param env: an env id, a callable returning an env, or an env instance (copied for extra slots).
    :param n_envs: number of env slots.
    :param seed: seed of the first slot (slot e gets ``seed + e``), as in SB3.
    :param env_kwargs: keyword arguments for ``gym.make`` or the callable.
    :param vec_env_cls: ``DummyVecEnv`` (default) or ``SubprocVecEnv``.
    """
    kwargs = env_kwargs or {}
    if isinstance(env, gym.Env):
        reward_space_of(env)  # fail early, in this process, with the fix in the message

    def make_slot(rank: int) -> Callable[[], gym.Env]:
        def _init() -> gym.Env:
            if isinstance(env, str):
                # gymnasium's env checker wants scalar rewards: an r-MDP's are vectors (checked below)
                slot_env = gym.make(env, **{"disable_env_checker": True, **kwargs})
            elif isinstance(env, gym.Env):
                slot_env = env if rank == 0 else copy.deepcopy(env)
            else:
                slot_env = env(**kwargs)
            wrapped: gym.Env = AgentRewardsWrapper(slot_env)
            return Monitor(wrapped) if monitor else wrapped

        return _init

    vec_env = (vec_env_cls or DummyVecEnv)([make_slot(i) for i in range(n_envs)], **(vec_env_kwargs or {}))
    if seed is not None:
        vec_env.seed(seed)
    return vec_env


def as_rmdp_vec_env(env: EnvLike, n_envs: int = 1, env_kwargs: dict[str, Any] | None = None) -> VecEnv:
    """``env`` as an r-MDP VecEnv: a VecEnv is checked, anything else built by :func:`make_rmdp_vec_env`.

    :raises ValueError: if a VecEnv's envs are not wrapped by ``AgentRewardsWrapper``.
    """
    if isinstance(env, VecEnv):
        if not all(env.env_is_wrapped(AgentRewardsWrapper)):
            raise ValueError(
                "The VecEnv's envs do not carry agent rewards: wrap each env in "
                "`sb3_rmdp.envs.AgentRewardsWrapper` before vectorizing, or build the VecEnv with "
                "`sb3_rmdp.envs.make_rmdp_vec_env(env_id, n_envs)`."
            )
        return env
    return make_rmdp_vec_env(env, n_envs=n_envs, env_kwargs=env_kwargs)


def vec_env_n_agents(vec_env: VecEnv) -> int:
    """Number of agents of an r-MDP VecEnv."""
    return int(vec_env.get_attr("n_agents", indices=[0])[0])


def vec_env_agent_params(vec_env: VecEnv) -> np.ndarray | None:
    """Agent params ``(n_agents, d)`` of the first slot's env, or ``None``."""
    envs = getattr(vec_env.unwrapped, "envs", None)
    if envs is not None:
        return agent_params_of(envs[0])
    try:
        params = vec_env.get_attr("agent_params", indices=[0])[0]
    except AttributeError:
        return None
    return None if params is None else np.asarray(params, dtype=np.float64).reshape(len(params), -1)


def resolve_env_spec(spec: str) -> str | Callable[..., gym.Env]:
    """An env given on a command line: a gymnasium id, ``module:EnvId-v0`` or ``module:factory``.

    ``module:Name`` imports ``module`` (from the current folder first, then the Python path: run from
    the folder that holds ``module.py``, or add its folder to ``PYTHONPATH``); ``Name`` is then an id
    the module registers with ``gymnasium.register`` (returned as ``module:Name``, which ``gym.make``
    reads), or else an env class or function of the module (returned itself).

    :raises ValueError: naming the module or the name when the module cannot be imported (with the
        import's own error in one line) or does not define ``Name``.
    """
    module_name, sep, name = spec.partition(":")
    if not sep:
        return spec
    if not module_name or not name:
        raise ValueError(f"--env {spec!r}: write module:EnvId-v0 or module:make_env (both parts).")
    import importlib
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # a console script's path starts at its own folder, not here
    before = set(gym.registry)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise ValueError(
                f"cannot import the module {module_name!r} of --env {spec} ({error}): run from the folder "
                f"that holds {module_name.replace('.', '/')}.py, or add that folder to PYTHONPATH."
            ) from None
        raise ValueError(
            f"importing {module_name} for --env {spec} failed: it needs {error.name!r}, which is not "
            "installed."
        ) from None
    except Exception as error:  # the user's module raised while importing
        where = ""
        if isinstance(error, SyntaxError) and error.lineno is not None:
            where = f" ({error.filename}, line {error.lineno})"
        raise ValueError(
            f"importing {module_name} for --env {spec} raised {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}{where}; fix the module."
        ) from None
    if name in gym.registry:
        return spec
    factory = getattr(module, name, None)
    if callable(factory):
        return factory
    registered = sorted(set(gym.registry) - before) or sorted(
        env_id
        for env_id, env_spec in gym.registry.items()
        if str(env_spec.entry_point).startswith(module_name)
    )
    listed = f"it registers {', '.join(registered)}" if registered else "it registers no env id"
    raise ValueError(
        f"--env {spec}: {module_name} has no env id or env factory {name!r} ({listed}): register it with "
        f"gymnasium.register(id={name!r}, entry_point=...) in {module_name}, or name an env class there."
    )
