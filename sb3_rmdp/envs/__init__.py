"""r-MDP environments: the contract, wrappers, vectorization and the built-in environments."""

from gymnasium.envs.registration import register, registry

from sb3_rmdp.envs.contract import (
    AGENT_REWARDS_KEY,
    AgentRewardsWrapper,
    SingleAgentRMDP,
    agent_params_of,
    n_agents_of,
    reward_space_of,
)
from sb3_rmdp.envs.vec_env import as_rmdp_vec_env, make_rmdp_vec_env

if "sb3_rmdp/ResourceGathering-v0" not in registry:
    register(
        id="sb3_rmdp/ResourceGathering-v0",
        entry_point="sb3_rmdp.envs.resource_gathering:ResourceGathering",
    )

__all__ = [
    "AGENT_REWARDS_KEY",
    "AgentRewardsWrapper",
    "SingleAgentRMDP",
    "agent_params_of",
    "as_rmdp_vec_env",
    "make_rmdp_vec_env",
    "n_agents_of",
    "reward_space_of",
]
