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
from sb3_rmdp.envs.resource_gathering_vec import ResourceGatheringVec
from sb3_rmdp.envs.vec_env import as_rmdp_vec_env, make_rmdp_vec_env

# Reward vectors are the contract: gymnasium's passive checker (scalar rewards) does not apply.
_ENVS = {
    "sb3_rmdp/ResourceGathering-v0": "sb3_rmdp.envs.resource_gathering:ResourceGathering",
    "sb3_rmdp/MaskedResourceGathering-v0": "sb3_rmdp.envs.resource_gathering:MaskedResourceGathering",
    "sb3_rmdp/HalfCheetahVelocity-v0": "sb3_rmdp.envs.velocity:half_cheetah_velocity",
    "sb3_rmdp/AntVelocity-v0": "sb3_rmdp.envs.velocity:ant_velocity",
    "sb3_rmdp/HopperVelocity-v0": "sb3_rmdp.envs.velocity:hopper_velocity",
    "sb3_rmdp/Walker2dVelocity-v0": "sb3_rmdp.envs.velocity:walker2d_velocity",
    "sb3_rmdp/Preference-v0": "sb3_rmdp.envs.preference:make_preference_env",
}
for _env_id, _entry_point in _ENVS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, disable_env_checker=True)

__all__ = [
    "AGENT_REWARDS_KEY",
    "AgentRewardsWrapper",
    "ResourceGatheringVec",
    "SingleAgentRMDP",
    "agent_params_of",
    "as_rmdp_vec_env",
    "make_rmdp_vec_env",
    "n_agents_of",
    "reward_space_of",
]
