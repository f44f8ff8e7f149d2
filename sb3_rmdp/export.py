"""Export one representative for review: a plain SB3 ``PPO`` file, and a dossier of the agents it serves.

An assessor reviews one deployable policy at a time, with stock tools. :func:`export_representative`
writes representative j as an SB3 ``PPO`` zip with a stock ``ActorCriticPolicy``, which
``stable_baselines3.PPO.load`` opens without this package installed; :func:`review_dossier` writes,
as JSON and Markdown, who that representative serves and how well (real evaluation episodes).
"""

from __future__ import annotations

import json
import pathlib
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch as th

from sb3_rmdp.files import atomic_write, with_zip_suffix, write_text
from sb3_rmdp.welfare import OPT_OUT, agent_welfare, evaluate_agent_returns, welfare_figures

if TYPE_CHECKING:
    from sb3_rmdp.core import RMDPAlgorithm


class _SpacesEnv(gym.Env):
    """An env that only declares spaces: ``PPO`` needs one to be built, and never steps it here."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, True, False, {}


def _check_representative(model: RMDPAlgorithm, j: int) -> int:
    if int(j) != j or not 0 <= j < model.k:
        raise ValueError(
            f"Representative {j}: the model has k={model.k} representatives, 0 <= j < {model.k}."
        )
    return int(j)


def served_agents(model: RMDPAlgorithm, j: int) -> np.ndarray:
    """The agents representative j serves in the deployed (hard) assignment, ``(m,)`` sorted indices."""
    return np.flatnonzero(model.assignment() == _check_representative(model, j))


def representative_state_dict(
    model: RMDPAlgorithm, j: int, agents: Sequence[int] | np.ndarray | None = None
) -> dict[str, th.Tensor]:
    """State dict of SB3's ``ActorCriticPolicy`` that acts as representative j (CPU tensors).

    The shared trunk (features extractor and MLP extractor) is copied as it is; the action head and
    the log-std are representative j's block (``action_net`` rows ``j*A:(j+1)*A``, ``log_std[j]``).
    The stock policy has one value output where ours has ``n_agents`` per representative; it becomes
    the **mean of representative j's per-agent values over** ``agents`` (default: the agents j serves
    in the deployed assignment, or all agents if it serves none). A value head is linear, so this mean
    is exact: ``V(s) = mean_{i in agents} V^{ij}(s)``.
    """
    j = _check_representative(model, j)
    policy = model.policy
    if agents is None:
        agents = served_agents(model, j)
        if len(agents) == 0:
            agents = np.arange(model.n_agents)
    index = th.as_tensor(np.asarray(agents, dtype=np.int64))
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= model.n_agents:
        raise ValueError(
            f"agents must be a non-empty list of indices in [0, {model.n_agents}); got {agents}."
        )
    state = {name: tensor.detach().cpu().clone() for name, tensor in policy.state_dict().items()}
    size = policy.action_head_size
    state["action_net.weight"] = state["action_net.weight"].view(model.k, size, -1)[j].clone()
    state["action_net.bias"] = state["action_net.bias"].view(model.k, size)[j].clone()
    if "log_std" in state:
        state["log_std"] = state["log_std"][j].clone()
    if getattr(policy, "critic_layout", "per_representative") == "conditioned":
        # Representative j's vector joins the first critic layer's bias; the head has n_agents rows.
        embedding = state.pop("critic_embedding")[j]
        state["mlp_extractor.value_net.0.bias"] = state["mlp_extractor.value_net.0.bias"] + embedding
        value_weight = state["value_net.weight"][index]
        value_bias = state["value_net.bias"][index]
    else:
        value_weight = state["value_net.weight"].view(model.k, model.n_agents, -1)[j, index]
        value_bias = state["value_net.bias"].view(model.k, model.n_agents)[j, index]
    state["value_net.weight"] = value_weight.mean(dim=0, keepdim=True)
    state["value_net.bias"] = value_bias.mean(dim=0, keepdim=True)
    return state


def export_representative(
    model: RMDPAlgorithm,
    j: int,
    path: str | pathlib.Path,
    agents: Sequence[int] | np.ndarray | None = None,
) -> pathlib.Path:
    """Write representative j as a plain SB3 ``PPO`` zip that ``stable_baselines3.PPO.load`` opens alone.

    The file holds a stock :class:`~stable_baselines3.common.policies.ActorCriticPolicy` with the
    model's observation and action spaces and ``policy_kwargs`` (net_arch, activation, features
    extractor...), whose weights are those of representative j (see :func:`representative_state_dict`:
    the value head predicts the mean value of the agents j serves). It acts exactly as
    ``model.predict(obs, representative=j)``: the same deterministic actions, the same action
    distribution. The file refers to nothing in this package. What it does not carry: the policy
    optimizer's state (fresh Adam moments; the trained moments mix every representative), the schedules
    (the learning rate and clip range are frozen at their values where training stopped) and, as with any
    SB3 model, a ``VecNormalize``'s statistics (save those with ``VecNormalize.save``).

    :param model: a trained model (:class:`~sb3_rmdp.RMDPPPO` or another algorithm of the package).
    :param j: the representative, ``0 <= j < k``.
    :param path: where to write; ``.zip`` is added when there is no suffix, as SB3 does. The file is
        written to a temporary file in the same folder and renamed into place.
    :param agents: agents whose mean value the exported value head predicts (default: those j serves).
    :return: the path written.
    """
    state = representative_state_dict(model, j, agents)
    progress = model._current_progress_remaining
    policy_kwargs = {
        key: value
        for key, value in model.policy_kwargs.items()
        if key not in ("k", "n_agents", "critic", "critic_agents")
    }
    base, kwargs = model.export_arguments(progress)
    with warnings.catch_warnings():
        # PPO warns about n_steps * n_envs vs batch_size for its one placeholder env slot.
        warnings.simplefilter("ignore", UserWarning)
        exported = base(
            type(model.policy).stock_policy,
            _SpacesEnv(model.observation_space, model.action_space),
            learning_rate=float(model.lr_schedule(progress)),
            policy_kwargs=policy_kwargs,
            seed=model.seed,
            device="cpu",
            **kwargs,
        )
    exported.policy.load_state_dict(state)
    path = with_zip_suffix(path)
    with atomic_write(path) as file:  # a failed export leaves the previous file intact
        exported.save(file)
    return path


def review_dossier(
    model: RMDPAlgorithm,
    j: int,
    env: Any,
    path: str | pathlib.Path,
    n_episodes: int = 1,
    deterministic: bool = True,
    table: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write ``<path>.json`` and ``<path>.md``: who representative j serves, and what they get.

    For each agent that j serves in the deployed (hard) assignment: its index, its agent params
    (``model.agent_params``, or ``None``), its weight on j, its evaluated return under j and its best
    representative and return; then the returns of j's agents (mean, min, max) and the social welfare
    of the deployed assignment over all agents (utilitarian, egalitarian, Nash), all from real
    evaluation episodes (:func:`~sb3_rmdp.welfare.evaluate_agent_returns`).

    :param model: a trained model (:class:`~sb3_rmdp.RMDPPPO` or another algorithm of the package).
    :param j: the representative, ``0 <= j < k``.
    :param env: the evaluation env (an env id, an r-MDP env or a VecEnv; see ``evaluate_agent_returns``).
    :param path: the dossier's path; its suffix, if any, is replaced by ``.json`` and ``.md``.
    :param n_episodes: evaluation episodes per representative.
    :param deterministic: evaluate the mode of each representative's distribution.
    :param table: an agent-returns table ``(n_agents, k)`` evaluated already (then ``env`` is not run).
    :return: the dossier (what the JSON file holds).
    """
    j = _check_representative(model, j)
    if table is None:
        table = evaluate_agent_returns(model, env, n_episodes=n_episodes, deterministic=deterministic)
    table = np.asarray(table, dtype=np.float64)
    if table.shape != (model.n_agents, model.k):
        raise ValueError(
            f"table of shape {table.shape}; expected (n_agents, k) = ({model.n_agents}, {model.k})."
        )
    assignment = model.assignment()
    with th.no_grad():
        weights = model.assigner.weights().detach().cpu().numpy()
    params = model.agent_params
    agents = served_agents(model, j)
    served_returns = table[agents, j]
    dossier: dict[str, Any] = {
        "representative": j,
        "k": model.k,
        "n_agents": model.n_agents,
        "assigner": type(model.assigner).__name__,
        "num_timesteps": int(model.num_timesteps),
        "evaluation": {"n_episodes": int(n_episodes), "deterministic": bool(deterministic)},
        "agents": [
            {
                "agent": int(i),
                "params": None if params is None else np.asarray(params[i]).tolist(),
                "weight": float(weights[i, j]),
                "return": float(table[i, j]),
                "best_representative": int(table[i].argmax()),
                "best_return": float(table[i].max()),
            }
            for i in agents
        ],
        "served_returns": {
            "mean": float(served_returns.mean()) if len(agents) else None,
            "min": float(served_returns.min()) if len(agents) else None,
            "max": float(served_returns.max()) if len(agents) else None,
        },
        "welfare": _welfare(model, table, assignment),
    }
    path = pathlib.Path(path)
    write_text(path.with_suffix(".json"), json.dumps(dossier, indent=2) + "\n")
    write_text(path.with_suffix(".md"), _markdown(dossier))
    return dossier


def _welfare(model: RMDPAlgorithm, table: np.ndarray, assignment: np.ndarray) -> dict[str, Any]:
    """The deployed assignment's welfare figures, the model's objective and its opt-outs."""
    limits = model.assignment_limits
    values = agent_welfare(table, assignment, limits.outside)
    welfare: dict[str, Any] = {**welfare_figures(values), "objective": limits.objective.name}
    if limits.outside is not None:
        welfare["opted_out"] = int(np.count_nonzero(assignment == OPT_OUT))
    if limits.c_min is not None or limits.c_max is not None:
        welfare["capacities"] = {"c_min": limits.c_min, "c_max": limits.c_max}
    return welfare


def _markdown(dossier: dict[str, Any]) -> str:
    j, k = dossier["representative"], dossier["k"]
    served, welfare = dossier["served_returns"], dossier["welfare"]
    lines = [
        f"# Representative {j} of {k}",
        "",
        f"- Serves {len(dossier['agents'])} of {dossier['n_agents']} agents in the deployed assignment "
        f"({dossier['assigner']}, {dossier['num_timesteps']} training steps).",
        f"- Evaluation: {dossier['evaluation']['n_episodes']} episode(s) per representative, "
        f"{'deterministic' if dossier['evaluation']['deterministic'] else 'stochastic'} actions.",
    ]
    if served["mean"] is not None:
        lines.append(
            f"- Returns of its agents: mean {served['mean']:.2f}, min {served['min']:.2f}, "
            f"max {served['max']:.2f}."
        )
    lines += [
        f"- Social welfare of the deployed assignment (all agents; trained for the {welfare['objective']} "
        f"welfare): utilitarian {welfare['utilitarian']:.2f}, egalitarian {welfare['egalitarian']:.2f}, "
        f"Nash {welfare['nash']:.2f}, 10th percentile {welfare['p10']:.2f}"
        + (f"; {welfare['opted_out']} agents take their outside option" if "opted_out" in welfare else "")
        + ".",
        "",
        "| agent | params | weight | return | best representative | best return |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in dossier["agents"]:
        params = "" if row["params"] is None else ", ".join(f"{value:.4g}" for value in row["params"])
        lines.append(
            f"| {row['agent']} | {params} | {row['weight']:.3f} | {row['return']:.2f} | "
            f"{row['best_representative']} | {row['best_return']:.2f} |"
        )
    return "\n".join(lines) + "\n"
