"""``EMAssigner``: the paper's EM-like hard assignment (section 3.3, Algorithm 1)."""

from __future__ import annotations

import numpy as np

from sb3_rmdp.assigners.base import Assigner, one_hot


def mix_returns(
    table: np.ndarray, observed: np.ndarray, episode_returns: list[np.ndarray], mixing: float
) -> None:
    """Mix each representative's mean episode return vector into its column of ``table``, in place.

    ``table[:, j] <- (1 - mixing) table[:, j] + mixing G_j`` (the paper's eq. 10), with ``G_j`` the mean
    return vector of the episodes representative j finished; a column's first observation is taken as
    it is (``observed[j]`` is then set), so the table carries no bias from its start.

    :param table: agent returns ``(n_agents, k)``, updated in place.
    :param observed: ``(k,)`` bool, whether each column has had an observation; updated in place.
    :param episode_returns: per representative, the returns ``(m_j, n_agents)`` of the episodes it
        finished (``m_j`` may be 0: the column is then left as it is).
    :param mixing: the moving-average coefficient in (0, 1]; 1 keeps the latest observation only.
    """
    for j, returns in enumerate(episode_returns):
        if len(returns) == 0:
            continue
        mean_return = np.asarray(returns, dtype=np.float64).mean(axis=0)
        if observed[j]:
            table[:, j] = (1.0 - mixing) * table[:, j] + mixing * mean_return
        else:
            table[:, j] = mean_return
            observed[j] = True


def best_response(table: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Every agent's best representative ``argmax_j table[i, j]``, staying put on ties.

    The welfare of ``table`` under the result is the largest any assignment reaches, and never below
    that of ``assignment``. Representatives may be left empty (:func:`e_step` prevents that).

    :param table: finite agent returns ``(n_agents, k)``.
    :param assignment: current hard assignment ``(n_agents,)``.
    :return: new hard assignment ``(n_agents,)``.
    """
    table = np.asarray(table, dtype=np.float64)
    old = np.asarray(assignment, dtype=np.int64)
    best = table.max(axis=1)
    return np.where(table[np.arange(len(old)), old] >= best, old, table.argmax(axis=1))


def e_step(table: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Greedy re-assignment that never leaves a representative without agents.

    Every agent moves to its best representative (:func:`best_response`: staying put on ties).
    Should a representative be left empty, one of the agents it served before is pinned back to it:
    the one that loses least by staying. Pinned agents keep their old representative and every other
    agent gets its best, so the welfare of ``table`` never decreases (the E-step of Theorem 2), and
    with no representative left empty the result is exactly the argmax.

    :class:`EMAssigner` deploys this assignment; with ``revive_idle`` it trains on
    :func:`revive_idle_representatives` of it.

    :param table: agent returns ``(n_agents, k)``.
    :param assignment: current hard assignment ``(n_agents,)`` with every representative non-empty.
    :return: new hard assignment ``(n_agents,)``.
    """
    table = np.asarray(table, dtype=np.float64)
    old = np.asarray(assignment, dtype=np.int64)
    n_agents, k = table.shape
    new = best_response(table, old)
    pinned = np.zeros(n_agents, dtype=bool)
    while True:
        sizes = np.bincount(new, minlength=k)
        empty = np.flatnonzero(sizes == 0)
        if empty.size == 0:
            return new
        j = int(empty[0])
        # Old members of j are all unpinned (a pinned agent sits at its old representative, and j is empty).
        members = np.flatnonzero((old == j) & ~pinned)
        loss = table[members, new[members]] - table[members, j]
        agent = int(members[np.argmin(loss)])
        new[agent] = j
        pinned[agent] = True


def _tolerance(table: np.ndarray) -> np.ndarray:
    """``(n_agents,)``: differences of returns below this are rounding, relative to the row's size."""
    return 1e-12 * np.maximum(1.0, np.abs(table).max(axis=1))


def indifferent_agents(table: np.ndarray) -> np.ndarray:
    """Agents whose estimated return is the same under every representative, ``(n_agents,)`` bool.

    Such an agent changes no welfare wherever it goes, and gives its representative nothing to learn
    from: with sparse rewards, an agent no representative has yet earned any reward for. Rows with a
    non-finite entry count as indifferent (nothing can be read from them).

    :param table: agent returns ``(n_agents, k)``.
    """
    table = np.asarray(table, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        spread = table.max(axis=1) - table.min(axis=1)
        return ~(spread > _tolerance(table))


def revive_idle_representatives(table: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Give each idle representative the agent that loses least by moving to it.

    A representative is *idle* when every agent it serves is indifferent (:func:`indifferent_agents`):
    its M-step then has no reward signal, and with a greedy E-step it would stay idle for good (every
    agent it could learn to serve is served a little better elsewhere). The paper gives an *empty*
    representative an agent before the M-step (Appendix A, "we may assign a random agent to this
    representative"); an idle one is empty in all but name.

    Indifferent agents get the same return everywhere; the lowest such return is the *floor* (0 with
    sparse rewards: what an agent gets when nobody reaches it). An idle representative j *earns* agent i
    something when ``table[i, j]`` is above the floor. It gets the agent with the smallest loss
    ``table[i, a_i] - table[i, j]`` among the informative agents it earns something, taken only from a
    representative that keeps another informative agent, so no representative is made idle or empty.
    An idle representative that earns no such agent anything stays as it is.

    This is the only step that may lower the welfare of ``table`` (by the losses of the moved agents,
    at most one per idle representative): the price of an M-step with something to learn.
    :class:`EMAssigner` therefore trains on the revived assignment but deploys the greedy one.

    :param table: agent returns ``(n_agents, k)``.
    :param assignment: hard assignment ``(n_agents,)``.
    :return: new hard assignment ``(n_agents,)``.
    """
    table = np.asarray(table, dtype=np.float64)
    new = np.array(assignment, dtype=np.int64)
    k = table.shape[1]
    indifferent = indifferent_agents(table)
    finite = np.isfinite(table).all(axis=1)
    if not np.any(indifferent & finite):
        return new  # no idle representative without indifferent agents (empty ones are the E-step's)
    informative = ~indifferent
    floor = table[indifferent & finite].min()
    earns = table - floor > _tolerance(table)[:, None]  # (n_agents, k)
    for j in range(k):
        counts = np.bincount(new[informative], minlength=k)
        if counts[j] > 0:
            continue
        # A moved agent is its new representative's only informative one, so the count guards it too.
        candidates = np.flatnonzero(informative & earns[:, j] & (counts[new] > 1))
        if candidates.size == 0:
            continue
        loss = table[candidates, new[candidates]] - table[candidates, j]
        new[int(candidates[np.argmin(loss)])] = j
    return new


class EMAssigner(Assigner):
    """Hard assignment by alternating E-steps (greedy re-assignment) with PPO updates (M-steps).

    A table ``Q`` ``(n_agents, k)`` estimates each agent's return under each representative. After
    every rollout, column j moves towards the mean return vector of the episodes representative j
    finished in that rollout: ``Q[:, j] <- (1 - mixing) Q[:, j] + mixing G_j`` (eq. 10; one episode
    gives all n returns, since every step yields all n rewards). A column's first observation is taken
    as it is, so the table carries no bias from its zero start. After the warm start, an
    :func:`e_step` follows every table update (eq. 11), so each M-step is one PPO update.
    Under the model's capacity limits or outside options (``c_min``, ``c_max``, ``outside_values``) the
    E-step is instead the welfare-maximizing assignment of ``Q`` under them
    (:func:`~sb3_rmdp.matching.best_assignment`: an LP for the utilitarian, Nash and alpha-fair
    objectives, a bottleneck assignment for the egalitarian one); an agent that no representative
    serves better than its outside value opts out (-1) and no representative trains for it.

    The warm start is ``warm_start_updates`` PPO updates (the paper's 50, about a tenth of its runs),
    capped at ``max_warm_start_fraction`` of the updates the first ``learn`` call plans, so that a
    short run still spends most of its budget personalizing.

    :param mixing: the moving-average coefficient lambda in (0, 1]; 1 uses the latest rollout only.
    :param warm_start_updates: PPO updates under the initial assignment before the first E-step.
    :param max_warm_start_fraction: cap of the warm start, as a fraction of the planned updates.
    :param initial_assignment: ``(n_agents,)``; default round-robin, agent i -> representative i % k.
    :param revive_idle: after each E-step, train every idle representative (all its agents indifferent:
        with sparse rewards, agents nobody earns anything for yet) on the agent it nearly serves best as
        well; see :func:`revive_idle_representatives`. The deployed assignment stays the greedy one.
        ``False`` trains on the plain greedy E-step.
    :param seed: unused (EM is deterministic); accepted for a uniform assigner API.
    :param figure_every: rollouts between two ``assignment/figure`` plots (0: none); see :class:`Assigner`.
    """

    #: the class default only serves assigners saved before the option existed: they keep the plain E-step
    revive_idle: bool = False

    def __init__(
        self,
        mixing: float = 0.05,
        warm_start_updates: int = 50,
        max_warm_start_fraction: float = 0.1,
        initial_assignment: np.ndarray | list[int] | None = None,
        revive_idle: bool = True,
        seed: int | None = None,
        verbose: int = 0,
        figure_every: int = 10,
    ):
        if not 0.0 < mixing <= 1.0:
            raise ValueError(f"mixing={mixing}: the moving-average coefficient must lie in (0, 1].")
        if warm_start_updates < 0:
            raise ValueError(f"warm_start_updates={warm_start_updates} must be >= 0.")
        super().__init__(seed=seed, verbose=verbose, figure_every=figure_every)
        self.mixing = float(mixing)
        if not 0.0 <= max_warm_start_fraction <= 1.0:
            raise ValueError(f"max_warm_start_fraction={max_warm_start_fraction} must lie in [0, 1].")
        self.warm_start_updates = int(warm_start_updates)
        self.max_warm_start_fraction = float(max_warm_start_fraction)
        #: the warm start in effect (set when training starts)
        self.effective_warm_start: int | None = None
        self.initial_assignment = None if initial_assignment is None else np.asarray(initial_assignment)
        self.revive_idle = bool(revive_idle)

    def _setup(self) -> None:
        if self.initial_assignment is None:
            hard = np.arange(self.n_agents) % self.k
        else:
            hard = _check_hard_assignment(self.initial_assignment, self.n_agents, self.k)
        self._set_hard_assignment(hard)
        self.q_table = np.zeros((self.n_agents, self.k), dtype=np.float64)
        self.observed = np.zeros(self.k, dtype=bool)
        self.n_e_steps = 0
        #: idle representatives given an agent to train on at the last E-step
        self.n_revived = 0

    def assignment(self) -> np.ndarray:
        return self.hard_assignment.copy()

    def value_table(self) -> np.ndarray | None:
        """The moving-average table ``Q`` ``(n_agents, k)``, once every column has an observation."""
        return self.q_table.copy() if self.observed.all() else None

    def update_table(self, episode_returns: list[np.ndarray]) -> None:
        """Mix each representative's mean episode returns into its column of ``Q`` (:func:`mix_returns`).

        :param episode_returns: per representative, the returns ``(m_j, n_agents)`` of the episodes it
            finished (``m_j`` may be 0: the column is then left as it is).
        """
        mix_returns(self.q_table, self.observed, episode_returns, self.mixing)

    def _on_training_start(self) -> None:
        if self.effective_warm_start is None:
            total = int(self.locals.get("total_timesteps", 0)) - self.num_timesteps
            per_update = int(self.model.n_steps * self.model.n_envs)  # type: ignore[attr-defined]
            planned = max(1, total // max(1, per_update))
            cap = int(np.ceil(self.max_warm_start_fraction * planned))
            self.effective_warm_start = min(self.warm_start_updates, cap)

    def _update(self) -> None:
        # All or nothing: the new table and assignment are computed aside and stored together, so that an
        # exception (or a Ctrl-C) in the middle leaves the state, and the rollout counter, as they were.
        q_table, observed = self.q_table.copy(), self.observed.copy()
        mix_returns(q_table, observed, self.model.rollout_episode_returns, self.mixing)  # type: ignore[attr-defined]
        warm_start = (
            self.warm_start_updates if self.effective_warm_start is None else self.effective_warm_start
        )
        greedy, trained = None, None
        if self.n_rollouts > warm_start and observed.all():
            if self.limits.constrains:
                # the welfare-maximizing assignment under capacities and outside options (never below the
                # table's welfare under the current one, which meets the same limits)
                greedy = self.limits.assign(q_table)
            else:
                greedy = e_step(q_table, self.hard_assignment)
                if self.revive_idle:
                    trained = revive_idle_representatives(q_table, greedy)
        self.q_table, self.observed = q_table, observed
        if greedy is not None:
            self._set_hard_assignment(greedy)  # what is deployed
            if trained is not None:
                self.n_revived = int(np.count_nonzero(trained != greedy))
                if self.n_revived:
                    self._set_weights(one_hot(trained, self.k, self.device))
            self.n_e_steps += 1

    def _log(self) -> None:
        super()._log()
        self.logger.record("assignment/revived", getattr(self, "n_revived", 0))


def _check_hard_assignment(assignment: np.ndarray, n_agents: int, k: int) -> np.ndarray:
    hard = np.asarray(assignment)
    if hard.shape != (n_agents,) or not np.issubdtype(hard.dtype, np.integer):
        raise ValueError(
            f"A hard assignment must be an integer array of shape (n_agents,) = ({n_agents},), "
            f"got {hard.dtype} {hard.shape}: give each agent the index of its representative."
        )
    if hard.min() < 0 or hard.max() >= k:
        raise ValueError(f"Assignment indices must lie in [0, k) = [0, {k}); got {hard.min()}..{hard.max()}.")
    return hard.astype(np.int64)
