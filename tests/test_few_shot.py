"""Few-shot selection on the user's own env: an agent of an r-MDP (``agent=i``), or a scalar-reward env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import ScaledRewardsEnv

from sb3_rmdp.deploy import select_representative


class FixedActionCommittee:
    """Representative j always plays action j (CartPole: 0 pushes left, 1 right)."""

    k = 2

    def predict(self, obs: object, deterministic: bool = False, representative: int = 0) -> tuple[int, None]:
        return representative, None


def test_an_agent_of_a_users_r_mdp_and_a_scalar_env_give_the_same_choice() -> None:
    population = ScaledRewardsEnv(gym.make("CartPole-v1"), scales=(1.0, 2.0, 0.5))
    by_agent = [
        select_representative(FixedActionCommittee(), population, n_episodes=2, agent=i) for i in range(3)
    ]
    scalar = select_representative(FixedActionCommittee(), gym.make("CartPole-v1"), n_episodes=2)
    for i, scale in enumerate((1.0, 2.0, 0.5)):
        assert by_agent[i][0] == scalar[0]
        np.testing.assert_allclose(by_agent[i][1], scale * scalar[1])


@pytest.mark.parametrize(("agent", "message"), [(None, r"3 agents: pass agent=i"), (3, r"0 <= agent < 3")])
def test_an_r_mdp_of_several_agents_needs_the_agent(agent: int | None, message: str) -> None:
    population = ScaledRewardsEnv(gym.make("CartPole-v1"), scales=(1.0, 2.0, 0.5))
    with pytest.raises(ValueError, match=message):
        select_representative(FixedActionCommittee(), population, agent=agent)
