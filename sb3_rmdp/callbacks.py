"""SB3's own callbacks on an r-MDP model: ``EvalCallback`` scores the deployed assignment, and the
model's assigner may sit in the user's ``CallbackList``.

An r-MDP model has k policies and n agents, so SB3's ``evaluate_policy`` (which calls
``model.predict(obs)`` and sums the env's scalar reward) has no policy to call and no single reward to
sum. :func:`serve_deployed_assignment` (run by every algorithm when ``learn`` starts) gives each
``EvalCallback`` of the user's callbacks what it needs, without changing the callback:

* its eval env is wrapped (at the bottom of its wrapper chain, so ``VecNormalize`` statistics still
  sync) in :class:`AgentScoringVecEnv`: each evaluation episode **scores one agent**, its reward is that
  agent's reward, so ``eval/mean_reward`` is the welfare of the deployed assignment (with
  ``n_eval_episodes`` a multiple of ``n_agents``, every agent is scored equally often: the exact
  utilitarian welfare for deterministic policies and envs);
* its model is a :class:`DeployedModel`: ``predict`` acts in each eval slot with the representative the
  deployed assignment gives the agent that slot scores (with the env's action masks, or the LSTM
  state, as the algorithm needs); everything else, ``save`` included, is the model itself, so
  ``best_model_save_path`` saves the whole model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from sb3_rmdp.assigners.base import Assigner
from sb3_rmdp.envs.contract import AgentRewardsWrapper, agent_rewards_of


class AgentScoringVecEnv(VecEnvWrapper):
    """An r-MDP VecEnv whose episodes each score one agent: the reward is that agent's reward.

    Agents are spread over the episodes of one evaluation as SB3's ``evaluate_policy`` counts them
    (slot ``s`` runs ``(n_episodes + s) // n_envs`` counted episodes): counted episode ``g`` of the
    evaluation scores agent ``floor(g * n_agents / n_episodes)`` (all agents, in turn, when
    ``n_episodes >= n_agents``). ``scored_agents`` holds each slot's agent; a Monitor's
    ``info["episode"]["r"]`` is rewritten to that agent's return.

    :param venv: an r-MDP VecEnv (each env wrapped in ``AgentRewardsWrapper``).
    :param n_agents: the agents of the r-MDP.
    :param n_episodes: the episodes of one evaluation (``EvalCallback``'s ``n_eval_episodes``).
    """

    def __init__(self, venv: VecEnv, n_agents: int, n_episodes: int):
        super().__init__(venv)
        self.n_agents = int(n_agents)
        self.n_episodes = max(1, int(n_episodes))
        self.episode_index = np.zeros(self.num_envs, dtype=np.int64)
        self.scored_agents = np.zeros(self.num_envs, dtype=np.int64)
        self._returns = np.zeros(self.num_envs)

    def _agent(self, slot: int) -> int:
        targets = [(self.n_episodes + s) // self.num_envs for s in range(self.num_envs)]
        counted = int(sum(targets[:slot]) + self.episode_index[slot])
        return int(counted * self.n_agents // self.n_episodes) % self.n_agents

    def reset(self) -> Any:
        self.episode_index[:] = 0
        self._returns[:] = 0.0
        self.scored_agents = np.array([self._agent(slot) for slot in range(self.num_envs)], dtype=np.int64)
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, _, dones, infos = self.venv.step_wait()
        rewards = agent_rewards_of(infos, self.venv)[np.arange(self.num_envs), self.scored_agents]
        self._returns += rewards
        for done in np.flatnonzero(dones):
            slot = int(done)
            if "episode" in infos[slot]:
                episode = {**infos[slot]["episode"], "r": float(self._returns[slot])}
                infos[slot] = {**infos[slot], "episode": episode}
            self._returns[slot] = 0.0
            self.episode_index[slot] += 1
            self.scored_agents[slot] = self._agent(slot)
        return obs, rewards, dones, infos


class DeployedModel:
    """What an ``EvalCallback`` calls its model: ``predict`` serves the deployed assignment, the rest
    (``save``, ``num_timesteps``, ``logger``...) is the model's.

    :param model: an r-MDP model (:class:`~sb3_rmdp.core.RMDPAlgorithm`).
    :param env: the eval env, which says which agent each slot scores.
    """

    def __init__(self, model: Any, env: AgentScoringVecEnv):
        self.model = model
        self.env = env

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """Each slot acted by the representative of the agent it scores (``(n_envs,)`` of them)."""
        representatives = self.model.assignment()[self.env.scored_agents]
        if action_masks is not None:  # sb3-contrib's MaskableEvalCallback passes the masks itself
            return self.model.predict(
                observation, state, episode_start, deterministic, representatives, action_masks=action_masks
            )
        return self.model.predict_in_env(
            observation, self.env, state, episode_start, deterministic, representatives
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def prepare_callbacks(model: Any, callbacks: list[BaseCallback]) -> list[BaseCallback]:
    """The user's callbacks, before SB3 initializes them: the model's own assigner taken out.

    The model runs its assigner first anyway, so one found among the callbacks (in a ``CallbackList``
    too) is dropped; another assigner is refused. An ``EvalCallback`` prepared by an earlier ``learn``
    gets its own eval env back for SB3's checks; :func:`serve_deployed_assignment` wraps it again.

    :raises ValueError: for an assigner that is not the model's.
    """
    kept = [callback for callback in callbacks if not _is_own_assigner(model, callback)]
    for callback in _tree(kept):
        if isinstance(callback, CallbackList):
            callback.callbacks = [child for child in callback.callbacks if not _is_own_assigner(model, child)]
        elif isinstance(callback, EvalCallback) and isinstance(callback.eval_env, AgentScoringVecEnv):
            callback.eval_env = callback.eval_env.venv
    return kept


def serve_deployed_assignment(model: Any, callbacks: list[BaseCallback]) -> None:
    """After SB3 initialized the callbacks: every ``EvalCallback`` scores the deployed assignment.

    :raises ValueError: for an ``EvalCallback`` whose eval env is not an r-MDP env.
    """
    for callback in _tree(callbacks):
        if isinstance(callback, EvalCallback):
            scoring = _scoring_env(callback, model.n_agents)
            callback.model = DeployedModel(model, scoring)  # type: ignore[assignment]


def _tree(callbacks: list[BaseCallback]) -> list[BaseCallback]:
    """The callbacks and, depth first, those their ``CallbackList`` s hold."""
    found: list[BaseCallback] = []
    for callback in callbacks:
        found.append(callback)
        if isinstance(callback, CallbackList):
            found.extend(_tree(callback.callbacks))
    return found


def _is_own_assigner(model: Any, callback: BaseCallback) -> bool:
    if not isinstance(callback, Assigner):
        return False
    if callback is model.assigner:
        return True
    raise ValueError(
        f"The callbacks hold a {type(callback).__name__} that is not this model's assigner "
        f"({type(model.assigner).__name__}): a model has one assigner, given to the constructor, e.g. "
        f"{type(model).__name__}(policy, env, k, assigner={type(callback).__name__}(...)); the model runs "
        "it first, so leave it out of the callbacks (or pass model.assigner there)."
    )


def _scoring_env(callback: EvalCallback, n_agents: int) -> AgentScoringVecEnv:
    """Insert an :class:`AgentScoringVecEnv` under the eval env's wrappers (once) and return it."""
    n_episodes = callback.n_eval_episodes
    parent: VecEnvWrapper | None = None
    current = callback.eval_env
    while isinstance(current, VecEnvWrapper):
        if isinstance(current, AgentScoringVecEnv):
            current.n_episodes = max(1, int(n_episodes))
            return current
        parent, current = current, current.venv
    if isinstance(current, DummyVecEnv) and not all(current.env_is_wrapped(AgentRewardsWrapper)):
        # EvalCallback wraps a plain gymnasium env in a DummyVecEnv: give it the r-MDP wrappers here
        current.envs = [Monitor(AgentRewardsWrapper(env)) for env in current.envs]
    if not all(current.env_is_wrapped(AgentRewardsWrapper)):
        raise ValueError(
            "EvalCallback's eval_env does not carry the agents' rewards: build it with "
            "sb3_rmdp.envs.make_rmdp_vec_env(env_id_or_factory, n_envs=1) (or pass the r-MDP env itself)."
        )
    scoring = AgentScoringVecEnv(current, n_agents, n_episodes)
    if parent is None:
        callback.eval_env = scoring
    else:
        parent.venv = scoring
    return scoring
