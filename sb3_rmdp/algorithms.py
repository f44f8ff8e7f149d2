"""The package's algorithms by name, and a loader that picks the class a model file names.

``"ppo"``, ``"a2c"``, ``"maskable_ppo"`` and ``"recurrent_ppo"`` (the last two need sb3-contrib, the
``contrib`` extra, and are imported only when asked for).
"""

from __future__ import annotations

import importlib
import io
import pathlib
from typing import Any

from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN

from sb3_rmdp.core import RMDPAlgorithm
from sb3_rmdp.serialization import read_model_bytes, read_model_data, saved_algorithm

#: algorithm name (``--algo``) -> (module, class)
ALGORITHMS: dict[str, tuple[str, str]] = {
    "ppo": ("sb3_rmdp.ppo", "RMDPPPO"),
    "a2c": ("sb3_rmdp.a2c", "RMDPA2C"),
    "maskable_ppo": ("sb3_rmdp.ppo_mask", "RMDPMaskablePPO"),
    "recurrent_ppo": ("sb3_rmdp.ppo_recurrent", "RMDPRecurrentPPO"),
}


def algorithm_class(name: str) -> type[RMDPAlgorithm]:
    """The algorithm called ``name`` (a key of :data:`ALGORITHMS`, or its class name, e.g. ``"RMDPA2C"``).

    :raises ValueError: for an unknown name, listing the known ones.
    :raises ImportError: when it needs sb3-contrib and sb3-contrib is not installed, naming the extra.
    """
    by_class = {cls: (module, cls) for module, cls in ALGORITHMS.values()}
    if name not in ALGORITHMS and name not in by_class:
        raise ValueError(f"Unknown algorithm {name!r}: choose one of {', '.join(ALGORITHMS)}.")
    module_name, class_name = ALGORITHMS.get(name) or by_class[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] == "sb3_contrib":
            raise ImportError(
                f"{class_name} needs sb3-contrib, which is not installed: pip install 'sb3-rmdp[contrib]'."
            ) from None
        raise
    return getattr(module, class_name)


def load_model(path: str | pathlib.Path | io.BufferedIOBase, **kwargs: Any) -> RMDPAlgorithm:
    """Load a model file with the class that saved it (``RMDPPPO``, ``RMDPA2C``...).

    :param kwargs: :meth:`RMDPAlgorithm.load <sb3_rmdp.core.RMDPAlgorithm.load>`'s (``env``, ``device``,
        ``trusted``...).
    :raises ValueError: as that ``load`` does (a damaged, plain-SB3 or untrusted file...).
    """
    raw, name = read_model_bytes(path)
    data = read_model_data(raw, name)
    cls = algorithm_class(saved_algorithm(data)) if "k" in data else algorithm_class("ppo")
    return cls.load(io.BytesIO(raw) if isinstance(path, io.BufferedIOBase) else path, **kwargs)


def default_policy(algorithm: type[RMDPAlgorithm], observation_space: spaces.Space) -> str:
    """The policy alias of ``algorithm`` for ``observation_space``: the one reading ``Dict`` observations
    (``"MultiInputPolicy"``), images (``"CnnPolicy"``) or vectors (``"MlpPolicy"``); ``...LstmPolicy``
    for RMDPRecurrentPPO."""
    if isinstance(observation_space, spaces.Dict):
        wanted: type = CombinedExtractor
    elif is_image_space(observation_space):
        wanted = NatureCNN
    else:
        wanted = FlattenExtractor
    for alias, policy in algorithm.policy_aliases.items():
        if getattr(policy, "default_features_extractor", None) is wanted:
            return alias
    return next(iter(algorithm.policy_aliases))
