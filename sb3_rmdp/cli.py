"""The ``sb3-rmdp`` command: train, evaluate, tune, export and report, without writing Python.

``sb3-rmdp train --env sb3_rmdp/ResourceGathering-v0 -k 3`` trains and saves a model;
``sb3-rmdp evaluate``, ``export`` and ``report`` work on the saved zip; ``sb3-rmdp tune`` runs an
Optuna study (:mod:`sb3_rmdp.tuning`). ``python -m sb3_rmdp`` is the same command.

User errors (an unknown env id, a missing file, ``k < 1``...) end with exit code 2 and one line on
stderr that says what to do; the library's own exceptions are left to surface with their traceback.
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib
import json
import pathlib
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sb3_rmdp.files import atomic_write, output_problem, with_zip_suffix, write_text

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

    from sb3_rmdp.core import RMDPAlgorithm

PROG = "sb3-rmdp"
ASSIGNER_NAMES = ("em", "end_to_end", "kmeans", "random", "oracle")
ALGORITHM_NAMES = ("ppo", "a2c", "maskable_ppo", "recurrent_ppo")
CSV_COLUMNS = ("algorithm", "k", "seed", "welfare")
# Why one torch thread by default: PPO's small MLPs gain nothing from intra-op parallelism, and on a
# 2-core machine whose other core was busy, 2 threads made training more than 10x slower than 1.
TORCH_THREADS_HELP = (
    "torch intra-op threads (default 1: small MLPs gain nothing from more, and 2 threads were measured "
    "more than 10x slower than 1 when the other core of a 2-core machine was busy)"
)


class UsageError(Exception):
    """A mistake in the command line or its files: reported in one line, exit code 2."""


# ---------------------------------------------------------------------------------------------- parsing
def _positive_int(text: str) -> int:
    """An integer >= 1; accepts ``1e5`` and ``100_000`` for step counts."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(value)


def _budget(text: str) -> int:
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"the policy budget k must be a whole number of representatives >= 1, got {text!r}"
        ) from None


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"expected a minibatch of at least 2 samples (advantages are normalized within it), got {text!r}"
        )
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def parse_key_values(pairs: Sequence[str] | None, option: str) -> dict[str, Any]:
    """``["size=3", "reward_scale=0.01", "name=x"]`` -> ``{"size": 3, "reward_scale": 0.01, "name": "x"}``.

    Values are Python literals (numbers, lists, ``True``, ``None``...) or else plain strings.

    :raises UsageError: on an item without ``=``.
    """
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"{option} takes key=value items (e.g. {option} size=3), got {pair!r}.")
        try:
            result[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            result[key] = text
    return result


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs (the examples)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--torch-threads", type=_positive_int, default=1, metavar="N", help=TORCH_THREADS_HELP
    )


def _trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust",
        action="store_true",
        help="the model file is trusted: allow the pickled objects it may hold, whose loading runs code "
        "from the file (a file saved by an older sb3-rmdp needs it; see the Security docs page)",
    )


def _env_options(parser: argparse.ArgumentParser, required: bool, what: str) -> None:
    parser.add_argument(
        "--env", required=required, metavar="ID", help=f"gymnasium id of the r-MDP env {what}"
    )
    parser.add_argument(
        "--env-kwargs",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="keyword arguments of the env, as used for training (e.g. n_agents=50 reward_scale=0.01)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``sb3-rmdp`` argument parser, with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_Formatter,
        description=(
            "Personalized RL under a budget of policies: train k representative policies that serve n "
            "agents, each with its own reward (an r-MDP), and the assignment of agents to representatives."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} train --env sb3_rmdp/ResourceGathering-v0 -k 3 --timesteps 150000 --save rg_k3.zip\n"
            f"  {PROG} evaluate rg_k3.zip --env sb3_rmdp/ResourceGathering-v0\n"
            f"  {PROG} export rg_k3.zip -j 0 --out rep0.zip --env sb3_rmdp/ResourceGathering-v0 --dossier\n"
            f"  {PROG} report benchmarks/results/resource_gathering/cells.csv --out welfare.png\n"
            f"  {PROG} bench run benchmarks/grids/figure3.toml --dry-run\n"
            f"  {PROG} tune --help\n\n"
            f"Run '{PROG} COMMAND --help' for the options of a command."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        formatter_class=_Formatter,
        help="train k representatives and their assignment (RMDPPPO, or --algo), then evaluate and save",
        description=(
            "Train k representatives on an r-MDP env (RMDPPPO, RMDPA2C, RMDPMaskablePPO or "
            "RMDPRecurrentPPO: --algo), show a progress bar, then evaluate the deployed assignment (each "
            "agent served by its representative) on real episodes, print the welfare and group sizes, and "
            "save the model as an SB3 zip. --env takes a registered id or an env of your own module: "
            "module:EnvId-v0 (an id the module registers) or module:MyEnv (an env class or function); the "
            "module is imported from the current folder, else from the Python path."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} train --env sb3_rmdp/ResourceGathering-v0 -k 3 --timesteps 150000\n"
            f"  {PROG} train --env sb3_rmdp/HalfCheetahVelocity-v0 -k 5 --assigner oracle "
            "--env-kwargs n_agents=100 --timesteps 2e6 --tensorboard-log runs/\n"
            f"  {PROG} train --env sb3_rmdp/ResourceGathering-v0 -k 2 --hyperparams default "
            "--n-steps 256 --policy-kwargs net_arch=[64,64]\n"
            f"  {PROG} train --env my_envs:Shop-v0 -k 3 --algo maskable_ppo --timesteps 2e5\n"
            f"  {PROG} train --env sb3_rmdp/ResourceGathering-v0 -k 3 --hyperparams best.json  "
            f"# what '{PROG} tune --out best.json' wrote\n\n"
            "Follow training in TensorBoard with: tensorboard --logdir runs/"
        ),
    )
    _env_options(train, required=True, what="to train on (e.g. sb3_rmdp/ResourceGathering-v0)")
    train.add_argument(
        "-k", "--k", type=_budget, required=True, help="the policy budget: number of representatives"
    )
    train.add_argument(
        "--algo",
        choices=ALGORITHM_NAMES,
        help="the algorithm (default ppo, or a --hyperparams file's); maskable_ppo reads the env's "
        "action_masks(); maskable_ppo and recurrent_ppo need sb3-contrib",
    )
    train.add_argument(
        "--assigner",
        choices=ASSIGNER_NAMES,
        help="how agents are assigned to representatives (default em, or a --hyperparams file's; oracle "
        "needs 1-D agent params)",
    )
    train.add_argument(
        "--policy",
        metavar="ALIAS",
        help="the policy alias (default: MultiInputPolicy for Dict observations, CnnPolicy for images, "
        "else MlpPolicy; ...LstmPolicy for recurrent_ppo)",
    )
    train.add_argument(
        "--timesteps",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="env steps, all slots (default 1e5)",
    )
    train.add_argument(
        "--n-envs",
        type=_positive_int,
        metavar="N",
        help="env slots (default k; when not a multiple of k, representatives rotate over them)",
    )
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_fairness_options(train)
    train.add_argument(
        "--hyperparams",
        metavar="tuned|default|FILE.json",
        help="tuned: the settings of sb3_rmdp.hyperparams for this env (PPO's); default: the algorithm's "
        f"defaults; FILE.json: the best trial '{PROG} tune --out' wrote (its k, assigner and algorithm "
        "with it). Default: tuned when the env has them",
    )
    train.add_argument("--n-steps", type=_positive_int, metavar="N", help="env steps per slot per update")
    train.add_argument("--batch-size", type=_batch_size, metavar="N", help="minibatch size, at least 2")
    train.add_argument("--n-epochs", type=_positive_int, metavar="N", help="epochs per update")
    train.add_argument(
        "--policy-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="e.g. net_arch=[64,64]"
    )
    train.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda (default auto)")
    train.add_argument("--tensorboard-log", metavar="DIR", help="write TensorBoard event files under DIR")
    train.add_argument(
        "--figure-every",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="TensorBoard: the assignment figure every N updates (0: none; default 10)",
    )
    train.add_argument(
        "--save",
        metavar="PATH",
        help="where to save the model (default ./<env>_k<k>_<assigner>_seed<seed>.zip; .zip is added to a "
        "path without suffix); Ctrl-C saves the model so far there",
    )
    train.add_argument(
        "--json", metavar="PATH", help="also write the summary (evaluation table included) as JSON"
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace an existing --save or --json file (default: refuse)"
    )
    train.add_argument(
        "--eval-episodes",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="evaluation episodes per representative for the final summary (0: skip; default 1)",
    )
    train.add_argument("--no-progress-bar", action="store_true", help="no progress bar (e.g. in CI logs)")
    train.add_argument("--verbose", type=int, default=0, choices=(0, 1), help="1: SB3's table every update")
    _common(train)

    evaluate = commands.add_parser(
        "evaluate",
        formatter_class=_Formatter,
        help="evaluate a saved model: every representative's agents, returns and the welfare",
        description=(
            "Run evaluation episodes of every representative for every agent and print, per "
            "representative, the agents it serves in the deployed assignment and their mean return, then "
            "the utilitarian, egalitarian and Nash welfare of the deployed assignment."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} evaluate rg_k3.zip --env sb3_rmdp/ResourceGathering-v0\n"
            f"  {PROG} evaluate hc_k5.zip --env sb3_rmdp/HalfCheetahVelocity-v0 --env-kwargs n_agents=100 "
            "--episodes 5 --json hc_k5.json"
        ),
    )
    evaluate.add_argument("model", metavar="MODEL.zip", help="a model saved by train (or RMDPPPO.save)")
    _env_options(evaluate, required=True, what="the model was trained on")
    evaluate.add_argument(
        "--episodes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="episodes per representative (default 1)",
    )
    evaluate.add_argument("--stochastic", action="store_true", help="sample actions instead of their mode")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the evaluation env (default 0)")
    evaluate.add_argument("--json", metavar="PATH", help="also write the results (table included) as JSON")
    _trust(evaluate)
    _common(evaluate)

    tune = commands.add_parser(
        "tune",
        add_help=False,
        help=f"tune hyperparameters with Optuna (the arguments go to sb3_rmdp.tuning; '{PROG} tune --help')",
    )
    tune.add_argument("arguments", nargs=argparse.REMAINDER)

    bench = commands.add_parser(
        "bench",
        add_help=False,
        help="run an experiment grid file into its store (resumable, local or Ray), or report it "
        f"('{PROG} bench --help')",
    )
    bench.add_argument("arguments", nargs=argparse.REMAINDER)

    export = commands.add_parser(
        "export",
        formatter_class=_Formatter,
        help="write one representative as a plain SB3 / sb3-contrib zip (and a review dossier)",
        description=(
            "Write representative J as a stock zip of the model's base algorithm (stable_baselines3 PPO or "
            "A2C, sb3_contrib MaskablePPO or RecurrentPPO) that its load opens without "
            "sb3-rmdp; with --dossier, also write <out>.json and <out>.md: the agents it serves and their "
            "evaluated returns."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} export rg_k3.zip -j 0 --out rep0.zip\n"
            f"  {PROG} export rg_k3.zip -j 0 --out rep0.zip --env sb3_rmdp/ResourceGathering-v0 --dossier"
        ),
    )
    export.add_argument("model", metavar="MODEL.zip", help="a model saved by train (or RMDPPPO.save)")
    export.add_argument("-j", type=int, required=True, help="the representative to export, 0 <= J < k")
    export.add_argument("--out", required=True, metavar="PATH", help="the zip to write")
    _env_options(export, required=False, what="the model was trained on (needed by --dossier)")
    export.add_argument("--dossier", action="store_true", help="also write the review dossier (needs --env)")
    export.add_argument(
        "--episodes", type=_positive_int, default=1, metavar="N", help="dossier: episodes per representative"
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file and dossier (default: refuse)",
    )
    _trust(export)
    _common(export)

    report = commands.add_parser(
        "report",
        formatter_class=_Formatter,
        help="plot welfare against k from benchmark CSVs, or a saved model's assignment",
        description=(
            "From benchmark CSVs (columns algorithm, k, seed, welfare, and optionally optimal_welfare "
            "or upper_bound): plot the welfare against k, mean +- standard error over seeds, one line per "
            "algorithm. From a saved model: plot its assignment over the agents' params."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} report benchmarks/results/resource_gathering/cells.csv --out welfare.png\n"
            f"  {PROG} report rg_k3.zip --out assignment.png"
        ),
    )
    report.add_argument("inputs", nargs="+", metavar="CSV_OR_MODEL", help="benchmark CSVs, or one model zip")
    report.add_argument("--out", required=True, metavar="PNG", help="the image to write (png, pdf, svg)")
    _env_options(
        report, required=False, what="for a model: agent params from this env instead of the saved ones"
    )
    report.add_argument("--title", help="the figure's title")
    _trust(report)
    _common(report)
    return parser


# ---------------------------------------------------------------------------------------------- helpers
def _registered_ids() -> list[str]:
    import gymnasium as gym

    return sorted(env_id for env_id in gym.registry if env_id.startswith("sb3_rmdp/"))


def check_env_id(env_id: str) -> None:
    """Fail with the list of registered ids when ``env_id`` is unknown to gymnasium.

    ``module:Name`` is checked by importing the module (:func:`sb3_rmdp.envs.vec_env.resolve_env_spec`).

    :raises UsageError: for an unknown id, or a module that cannot be imported or lacks the name.
    """
    env_spec(env_id)


def env_spec(env_id: str) -> Any:
    """``--env``'s env: a registered id, or (``module:Name``) the id or env factory of the user's module.

    :raises UsageError: in one line, for an unknown id, a module that cannot be imported (a missing
        file, a syntax error...) or one that does not define the name.
    """
    import gymnasium as gym

    import sb3_rmdp.envs  # noqa: F401  (registers the built-in ids)
    from sb3_rmdp.envs.vec_env import resolve_env_spec

    if ":" in env_id:
        try:
            return resolve_env_spec(env_id)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if env_id in gym.registry:
        return env_id
    try:  # MO-Gymnasium's envs are r-MDPs; they register on import
        import mo_gymnasium  # noqa: F401
    except ImportError:
        pass
    if env_id not in gym.registry:
        raise UsageError(
            f"unknown env id {env_id!r}; the sb3_rmdp envs are {', '.join(_registered_ids())} "
            "(any registered gymnasium id of an env with a reward vector works too, or module:EnvId-v0 / "
            "module:MyEnv for an env of your own module)."
        )
    return env_id


def make_env(env_id: str, env_kwargs: dict[str, Any], n_envs: int = 1, seed: int | None = None) -> VecEnv:
    """An r-MDP VecEnv for the command line, with user mistakes turned into :class:`UsageError`."""
    import gymnasium as gym

    from sb3_rmdp.envs import make_rmdp_vec_env

    env = env_spec(env_id)
    try:
        return make_rmdp_vec_env(env, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    except gym.error.DependencyNotInstalled as error:
        raise UsageError(f"{env_id} needs a package that is not installed: {error}") from None
    except TypeError as error:
        reason = str(error).split(" was raised from the environment creator")[0]  # gymnasium's suffix
        raise UsageError(
            f"{env_id} rejects the env kwargs {_format_kwargs(env_kwargs)} ({reason}): fix --env-kwargs."
        ) from None
    except ValueError as error:
        raise UsageError(f"{env_id}: {error}") from None


def _format_kwargs(kwargs: dict[str, Any]) -> str:
    return " ".join(f"{key}={value!r}" for key, value in kwargs.items())


def check_outputs(outputs: Sequence[tuple[str, str | pathlib.Path]], overwrite: bool) -> None:
    """Fail before any work when an output file cannot be written (or exists, without ``--overwrite``).

    :param outputs: ``(option, path)`` pairs, e.g. ``[("--save", "model.zip")]``.
    :raises UsageError: naming the option, the path and the fix.
    """
    for option, path in outputs:
        problem = output_problem(path, overwrite=overwrite)
        if problem is not None:
            raise UsageError(f"{option} {path}: {problem}.")


def check_device(device: str) -> None:
    """Fail on a device torch does not know, or on a CUDA device where torch sees no GPU.

    :raises UsageError: naming the devices that work.
    """
    import torch as th

    if device == "auto":
        return
    try:
        kind = th.device(device).type
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device}: not a torch device; pass auto, cpu or cuda (cuda:N).") from None
    if kind == "cuda" and not th.cuda.is_available():
        raise UsageError(
            f"--device {device}: torch sees no CUDA GPU here (torch.cuda.is_available() is False); pass "
            "--device cpu (or auto, which takes a GPU when there is one)."
        )


def existing_file(path: str, what: str) -> pathlib.Path:
    """``path`` as a ``Path`` if it is a file.

    :raises UsageError: naming the path and what it should be.
    """
    file = pathlib.Path(path)
    if not file.is_file():
        raise UsageError(f"{what} {path!r} does not exist (or is not a file); check the path.")
    return file


def load_model(path: str, device: str = "auto", trusted: bool = False) -> RMDPAlgorithm:
    """Load a saved model with the class that saved it, running no code from it unless ``trusted``.

    :raises UsageError: when the file is missing, damaged, untrusted or is not an sb3-rmdp save.
    """
    from sb3_rmdp.algorithms import load_model as load_saved
    from sb3_rmdp.serialization import ModelFileError, UntrustedFileError

    file = existing_file(path, "model file")
    try:
        return load_saved(file, device=device, trusted=trusted)
    except UntrustedFileError as error:
        why = str(error).split(" If you trust the file")[0]
        raise UsageError(
            f"{why} If you trust the file, pass --trust (see the Security page of the docs)."
        ) from None
    except (ModelFileError, ImportError) as error:  # ImportError: sb3-contrib missing, named
        raise UsageError(str(error)) from None
    except Exception as error:  # a zip of another algorithm, a truncated file, not a zip...
        raise UsageError(
            f"cannot load {path!r} as an sb3-rmdp model ({type(error).__name__}: {error}); pass a zip "
            f"written by '{PROG} train' or a model's save."
        ) from None


def evaluation_env(
    model: RMDPAlgorithm, env_id: str, env_kwargs: dict[str, Any], seed: int | None = 0
) -> VecEnv:
    """The env a saved model is evaluated on, checked against the model (agents and spaces)."""
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
    from stable_baselines3.common.vec_env import VecTransposeImage

    from sb3_rmdp.envs.vec_env import vec_env_n_agents

    vec_env = make_env(env_id, env_kwargs, seed=seed)
    n_agents = vec_env_n_agents(vec_env)
    space = vec_env.observation_space
    if is_image_space(space) and not is_image_space_channels_first(space):  # type: ignore[arg-type]
        vec_env = VecTransposeImage(vec_env)  # as SB3 wrapped the training env
    if n_agents != model.n_agents or vec_env.observation_space != model.observation_space:
        raise UsageError(
            f"the model serves {model.n_agents} agents with observations {model.observation_space}, but "
            f"{env_id} {_format_kwargs(env_kwargs) or '(no --env-kwargs)'} has {n_agents} agents with "
            f"{vec_env.observation_space}: pass the --env and --env-kwargs the model was trained with."
        )
    return vec_env


def compact_indices(indices: np.ndarray) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"`` (``"-"`` when empty)."""
    values = [int(value) for value in np.asarray(indices).reshape(-1)]
    if not values:
        return "-"
    parts, start, previous = [], values[0], values[0]
    for value in [*values[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if value is not None:
            start = previous = value
    return ", ".join(parts)


def welfare_summary(
    table: np.ndarray,
    assignment: np.ndarray,
    outside: np.ndarray | None = None,
    objective: Any = None,
) -> dict[str, Any]:
    """What ``evaluate`` reports: per representative its agents and their mean return, and the welfare.

    :param table: evaluated agent returns ``(n_agents, k)``.
    :param assignment: the deployed hard assignment ``(n_agents,)`` (-1: the agent opts out).
    :param outside: ``(n_agents,)`` outside values (what an opted-out agent gets), or ``None``.
    :param objective: the model's :class:`~sb3_rmdp.objectives.WelfareObjective` (reported by name).
    """
    from sb3_rmdp.welfare import OPT_OUT, agent_welfare, best_assignment, utilitarian_welfare, welfare_figures

    n_agents, k = table.shape
    assignment = np.asarray(assignment)
    representatives = []
    for j in range(k):
        agents = np.flatnonzero(assignment == j)
        representatives.append(
            {
                "representative": j,
                "agents": agents.tolist(),
                "mean_return": float(table[agents, j].mean()) if len(agents) else None,
            }
        )
    values = agent_welfare(table, assignment, outside)
    served = assignment != OPT_OUT
    welfare: dict[str, Any] = welfare_figures(values)
    if objective is not None and not objective.is_utilitarian:
        welfare["objective"] = objective.name
        if not (objective.positive and np.any(values <= 0)):
            welfare["objective_value"] = objective.value(values)
    return {
        "n_agents": n_agents,
        "k": k,
        "assignment": assignment.tolist(),
        "group_sizes": np.bincount(assignment[served], minlength=k).tolist(),
        "opted_out": int(np.count_nonzero(~served)),
        "representatives": representatives,
        "welfare": welfare,
        # Each agent re-assigned to its best representative on this table: what the E-step would deploy.
        "utilitarian_welfare_best_reassignment": utilitarian_welfare(table, best_assignment(table)),
        "table": table.tolist(),
    }


def print_summary(summary: dict[str, Any], title: str) -> None:
    """Print the per-representative table and the welfare lines of :func:`welfare_summary`."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(title)
    table = Table()
    table.add_column("representative", justify="right")
    table.add_column("agents", justify="right")
    table.add_column("which agents")
    table.add_column("their mean return", justify="right")
    for row in summary["representatives"]:
        mean = "-" if row["mean_return"] is None else f"{row['mean_return']:.4g}"
        table.add_row(
            str(row["representative"]), str(len(row["agents"])), compact_indices(row["agents"]), mean
        )
    console.print(table)
    welfare = summary["welfare"]
    console.print(
        f"welfare of the deployed assignment: utilitarian {welfare['utilitarian']:.4g}, "
        f"egalitarian {welfare['egalitarian']:.4g}, nash {welfare['nash']:.4g}, "
        f"10th percentile {welfare['p10']:.4g}"
    )
    if summary.get("opted_out"):
        console.print(f"agents taking their outside option: {summary['opted_out']} of {summary['n_agents']}")
    console.print(
        "utilitarian welfare if each agent took its best representative: "
        f"{summary['utilitarian_welfare_best_reassignment']:.4g}"
    )


# ---------------------------------------------------------------------------------------------- commands
def add_fairness_options(parser: argparse.ArgumentParser) -> None:
    """``--welfare``, ``--welfare-temperature``, ``--c-min``, ``--c-max`` and ``--outside``."""
    parser.add_argument(
        "--welfare",
        type=_welfare_spec,
        default="utilitarian",
        metavar="OBJECTIVE",
        help="the welfare the M-step follows and the summary reports: utilitarian (the paper's mean; "
        "default), egalitarian (the worst-off agent, a smooth minimum), nash, or alpha_fair:ALPHA",
    )
    parser.add_argument(
        "--welfare-temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="egalitarian: the smooth minimum's temperature, in units of training returns (default 1)",
    )
    parser.add_argument(
        "--c-min", type=_non_negative_int, metavar="N", help="at least N agents per representative"
    )
    parser.add_argument(
        "--c-max", type=_positive_int, metavar="N", help="at most N agents per representative"
    )
    parser.add_argument(
        "--outside",
        metavar="U|FILE",
        help="outside options: an agent takes its outside value instead of a representative that does "
        "not beat it; a number for every agent, or a .npy / .json file of one per agent",
    )


def _welfare_spec(text: str) -> Any:
    """``--welfare``'s value as a ``welfare=`` spec: a name, or ``alpha_fair:ALPHA``."""
    from sb3_rmdp.objectives import welfare_objective

    name, _, alpha = text.partition(":")
    spec: Any = text
    if name == "alpha_fair":
        try:
            spec = ("alpha_fair", float(alpha))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: write alpha_fair:ALPHA, e.g. alpha_fair:2") from None
    try:
        welfare_objective(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose utilitarian, egalitarian, nash or alpha_fair:ALPHA ({error})"
        ) from None
    return spec


def fairness_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The model's ``welfare``, ``welfare_temperature``, ``c_min``, ``c_max`` and ``outside_values``.

    :raises UsageError: for an ``--outside`` that is neither a number nor a readable array file.
    """
    outside: Any = None
    if args.outside is not None:
        try:
            outside = float(args.outside)
        except ValueError:
            file = existing_file(args.outside, "--outside file")
            try:
                if file.suffix == ".npy":
                    outside = np.load(file, allow_pickle=False)
                else:
                    outside = np.asarray(json.loads(file.read_text()), dtype=np.float64)
            except (ValueError, TypeError, OSError) as error:
                raise UsageError(
                    f"--outside {args.outside}: not an array of numbers ({error}); give a number, a .npy "
                    "file or a .json list with one outside value per agent."
                ) from None
    return {
        "welfare": args.welfare,
        "welfare_temperature": args.welfare_temperature,
        "c_min": args.c_min,
        "c_max": args.c_max,
        "outside_values": outside,
    }


def train_command(args: argparse.Namespace) -> int:
    from stable_baselines3.common.vec_env import VecNormalize
    from tqdm import TqdmExperimentalWarning

    from sb3_rmdp.algorithms import default_policy
    from sb3_rmdp.welfare import evaluate_agent_returns

    env_spec(args.env)
    settings = training_settings(args)
    algorithm: Any = algorithm_or_usage_error(settings.algo)
    # Every output is checked before training: a run must not end unable to write what it trained.
    save = with_zip_suffix(args.save or _default_save_name(args, settings.assigner_name))
    statistics = save.with_name(f"{save.stem}_vecnormalize.pkl")
    outputs = [("--save", save), *([("--json", args.json)] if args.json else [])]
    if settings.normalize_observations:
        outputs.append(("--save (VecNormalize statistics)", statistics))
    check_outputs(outputs, args.overwrite)
    if args.tensorboard_log:
        problem = output_problem(args.tensorboard_log, folder=True)
        if problem is not None:
            raise UsageError(f"--tensorboard-log {args.tensorboard_log}: {problem}.")
    check_device(args.device)

    params = dict(settings.params)
    n_envs = args.n_envs or params.pop("n_envs", None) or args.k
    env = make_env(args.env, settings.env_kwargs, n_envs=n_envs, seed=args.seed)
    if settings.normalize_observations:
        env = VecNormalize(env, norm_obs=True, norm_reward=False)
    policy = args.policy or default_policy(algorithm, env.observation_space)
    if policy not in algorithm.policy_aliases:
        raise UsageError(
            f"--policy {policy}: {algorithm.__name__} takes {', '.join(algorithm.policy_aliases)}."
        )
    try:
        model = algorithm(
            policy,
            env,
            k=args.k,
            assigner=settings.assigner,
            tensorboard_log=args.tensorboard_log,
            seed=args.seed,
            device=args.device,
            verbose=args.verbose,
            **fairness_kwargs(args),
            **params,
        )
    except ValueError as error:  # k > n_agents, an assigner that does not fit the env, capacities...
        raise UsageError(str(error)) from None
    except TypeError as error:  # policy kwargs the policy does not take
        raise UsageError(f"{error}; fix --policy-kwargs (e.g. net_arch=[64,64]).") from None

    name = algorithm.__name__
    described_kwargs = _format_kwargs(settings.env_kwargs) or "default env kwargs"
    print(
        f"Training {name} ({policy}) on {args.env} ({described_kwargs}): {model.n_agents} agents, "
        f"k={args.k} representatives, {settings.assigner_name} assigner, {settings.label} hyperparameters, "
        f"{args.timesteps} steps over {n_envs} env slots."
    )
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TqdmExperimentalWarning)  # SB3's bar is tqdm.rich's
            model.learn(
                args.timesteps,
                progress_bar=not args.no_progress_bar,
                tb_log_name=f"{settings.assigner_name}_k{args.k}",
            )
    except KeyboardInterrupt:
        model.save(save)  # checked writable above; written atomically
        print(
            f"\nInterrupted after {model.num_timesteps} of {args.timesteps} steps: the model so far is saved "
            f"to {save}. Resume it with {name}.load({str(save)!r}, env=...).learn(..., "
            "reset_num_timesteps=False).",
            file=sys.stderr,
        )
        return 130
    elapsed = time.perf_counter() - start
    model.save(save)
    if isinstance(env, VecNormalize):
        env.save(str(statistics))
        print(f"VecNormalize statistics saved to {statistics} (load them with VecNormalize.load)")
    speed = model.num_timesteps / elapsed
    print(f"Trained {model.num_timesteps} steps in {elapsed:.1f} s ({speed:.0f} steps/s).")
    summary: dict[str, Any] = {}
    if args.eval_episodes > 0:
        # In the env's own units: the tuned env kwargs (e.g. Resource Gathering's reward_scale=0.01) are
        # a training device, so only the user's --env-kwargs shape the evaluation env.
        eval_env = make_env(args.env, settings.user_env_kwargs, seed=args.seed)
        if isinstance(env, VecNormalize):
            eval_env = VecNormalize(eval_env, training=False, norm_obs=True, norm_reward=False)
            eval_env.obs_rms = env.obs_rms
        table = evaluate_agent_returns(model, eval_env, n_episodes=args.eval_episodes)
        limits = model.assignment_limits
        summary = welfare_summary(table, model.assignment(), limits.outside, limits.objective)
        print_summary(
            summary, f"Deployed assignment, {args.eval_episodes} evaluation episode(s) per representative"
        )
    else:
        deployed = model.assignment()
        sizes = np.bincount(deployed[deployed >= 0], minlength=args.k)
        print(f"group sizes: {' '.join(str(size) for size in sizes)}")
    print(f"Model saved to {save}")
    if args.json:
        results = {
            "model": str(save),
            "algo": settings.algo,
            "env": args.env,
            "env_kwargs": settings.user_env_kwargs,
            "k": args.k,
            "assigner": settings.assigner_name,
            "num_timesteps": int(model.num_timesteps),
            "train_seconds": elapsed,
            "eval_episodes": args.eval_episodes,
            "assignment": model.assignment().tolist(),
            **summary,
        }
        write_text(args.json, json.dumps(results, indent=2, default=str) + "\n")
        print(f"Summary written to {args.json}")
    # The user's env kwargs only, as for the summary above: returns in the env's own units.
    user_kwargs = settings.user_env_kwargs
    env_option = " --env-kwargs " + " ".join(f"{key}={value!r}" for key, value in user_kwargs.items())
    print(f"Evaluate it with: {PROG} evaluate {save} --env {args.env}{env_option if user_kwargs else ''}")
    if args.tensorboard_log:
        print(f"TensorBoard logs in {args.tensorboard_log}: tensorboard --logdir {args.tensorboard_log}")
    return 0


@dataclass
class TrainingSettings:
    """What ``train`` builds the model from, after ``--algo``, ``--assigner`` and ``--hyperparams``."""

    algo: str
    assigner_name: str
    assigner: Any
    #: the algorithm's keyword arguments (no ``k``, ``assigner``, ``env_kwargs``)
    params: dict[str, Any]
    #: the env kwargs of training (tuned ones included) and the user's own (``--env-kwargs``)
    env_kwargs: dict[str, Any]
    user_env_kwargs: dict[str, Any]
    #: ``tuned``, ``default`` or the file's name
    label: str
    normalize_observations: bool = False


def training_settings(args: argparse.Namespace) -> TrainingSettings:
    """Resolve ``--algo``, ``--assigner`` and ``--hyperparams`` (``tuned``, ``default`` or a file that
    ``sb3-rmdp tune --out`` wrote), then the single options (``--n-steps``...) over them.

    :raises UsageError: for a file that is missing, unreadable or tuned for another env, k, assigner
        or algorithm, tuned settings for A2C, or PPO's options given to A2C.
    """
    from sb3_rmdp.assigners import ASSIGNERS, EMAssigner
    from sb3_rmdp.hyperparams import HYPERPARAMS, hyperparams_for

    user_env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
    policy_kwargs = parse_key_values(args.policy_kwargs, "--policy-kwargs")
    spec = args.hyperparams
    algo = args.algo
    assigner_name = args.assigner
    normalize = False
    assigner_kwargs: dict[str, Any] = {}
    if spec not in (None, "tuned", "default"):
        best = read_best_params(spec, args)
        algo = algo or best.get("algo", "ppo")
        assigner_name = assigner_name or best["assigner"]
        hyperparams = dict(best["hyperparams"])
        assigner_kwargs = dict(hyperparams.pop("assigner_kwargs", {}) or {})
        params = {"env_kwargs": dict(hyperparams.pop("env_kwargs", {}) or {}), **hyperparams}
        normalize = bool(best.get("normalize_observations", False))
        label = pathlib.Path(spec).name
    algo = algo or "ppo"
    assigner_name = assigner_name or "em"
    if spec is None:
        spec = "tuned" if args.env in HYPERPARAMS and algo != "a2c" else "default"
    if spec == "tuned":
        if args.env not in HYPERPARAMS:
            raise UsageError(
                f"no tuned hyperparameters for {args.env} (tuned: {', '.join(sorted(HYPERPARAMS))}); "
                "pass --hyperparams default."
            )
        if algo == "a2c":
            raise UsageError(
                f"the tuned settings of {args.env} are PPO's (minibatches, epochs): pass --hyperparams "
                f"default, or a file from '{PROG} tune --algo a2c --out best.json'."
            )
        params = hyperparams_for(args.env)
        label = "tuned"
    elif spec == "default":
        params = {"env_kwargs": {}}
        label = "default"
    env_kwargs = {**params.pop("env_kwargs"), **user_env_kwargs}
    tuned_assigner = params.pop("assigner", None)
    assigner: Any
    if assigner_name == "em" and isinstance(tuned_assigner, EMAssigner):
        assigner = tuned_assigner
        assigner.figure_every = args.figure_every
    else:
        try:
            assigner = ASSIGNERS[assigner_name](figure_every=args.figure_every, **assigner_kwargs)
        except (TypeError, ValueError) as error:
            raise UsageError(f"the {assigner_name} assigner's settings: {error}") from None
    for name in ("n_steps", "batch_size", "n_epochs"):
        if getattr(args, name) is not None:
            if algo == "a2c" and name != "n_steps":
                raise UsageError(
                    f"--{name.replace('_', '-')}: A2C takes one gradient step on each whole rollout (no "
                    "minibatches, no epochs); drop it, or pass --algo ppo."
                )
            params[name] = getattr(args, name)
    if policy_kwargs:
        params["policy_kwargs"] = {**params.get("policy_kwargs", {}), **policy_kwargs}
    return TrainingSettings(
        algo, assigner_name, assigner, params, env_kwargs, user_env_kwargs, label, normalize
    )


def read_best_params(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """The file ``sb3-rmdp tune --out`` wrote, checked against the command line's env, k, assigner and
    algorithm.

    :raises UsageError: naming the file and what does not fit.
    """
    file = existing_file(path, "--hyperparams file")
    try:
        best = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(
            f"--hyperparams {path}: not a JSON file ({error}); pass tuned, default, or the file '{PROG} tune "
            "--out' wrote."
        ) from None
    if not isinstance(best, dict) or not isinstance(best.get("hyperparams"), dict) or "assigner" not in best:
        raise UsageError(
            f"--hyperparams {path}: not a file of '{PROG} tune --out' (it has no hyperparams and assigner); "
            "pass tuned, default, or that file."
        )
    mismatches = [
        (option, given, tuned)
        for option, given, tuned in (
            ("--env", args.env, best.get("env")),
            ("-k", args.k, best.get("k")),
            ("--assigner", args.assigner, best.get("assigner")),
            ("--algo", args.algo, best.get("algo", "ppo")),
        )
        if given is not None and tuned is not None and str(given) != str(tuned)
    ]
    if mismatches:
        option, given, tuned = mismatches[0]
        raise UsageError(
            f"--hyperparams {path} was tuned for {option} {tuned}, not {given}: pass {option} {tuned}, or "
            "tune again for this setting."
        )
    return best


def algorithm_or_usage_error(algo: str) -> type[RMDPAlgorithm]:
    """The algorithm called ``algo``; sb3-contrib's missing becomes a one-line error naming the extra."""
    from sb3_rmdp.algorithms import algorithm_class

    try:
        return algorithm_class(algo)
    except (ImportError, ValueError) as error:
        raise UsageError(str(error)) from None


def _default_save_name(args: argparse.Namespace, assigner: str) -> str:
    env_name = args.env.split("/")[-1].split(":")[-1]
    algo = "" if args.algo in (None, "ppo") else f"{args.algo}_"
    return f"{env_name}_{algo}k{args.k}_{assigner}_seed{args.seed}.zip"


def evaluate_command(args: argparse.Namespace) -> int:
    from sb3_rmdp.welfare import evaluate_agent_returns

    model = load_model(args.model, trusted=args.trust)
    env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
    vec_env = evaluation_env(model, args.env, env_kwargs, seed=args.seed)
    table = evaluate_agent_returns(
        model, vec_env, n_episodes=args.episodes, deterministic=not args.stochastic
    )
    summary = welfare_summary(
        table, model.assignment(), model.assignment_limits.outside, model.welfare_objective
    )
    print_summary(
        summary,
        f"{args.model} on {args.env}: {args.episodes} episode(s) per representative, "
        f"{'stochastic' if args.stochastic else 'deterministic'} actions",
    )
    if args.json:
        summary = {
            "model": str(args.model),
            "env": args.env,
            "env_kwargs": env_kwargs,
            "episodes": args.episodes,
            "deterministic": not args.stochastic,
            **summary,
        }
        write_text(args.json, json.dumps(summary, indent=2, default=str) + "\n")
        print(f"Results written to {args.json}")
    return 0


def tune_command(argv: list[str]) -> int:
    """Forward ``argv`` to ``sb3_rmdp.tuning.tune_main`` (imported only now: Optuna is an extra)."""
    try:
        tuning = importlib.import_module("sb3_rmdp.tuning")
    except ModuleNotFoundError as error:
        if error.name == "sb3_rmdp.tuning":
            raise UsageError(
                "this installation of sb3-rmdp has no tuning module (sb3_rmdp.tuning); update sb3-rmdp to "
                "a version that ships 'sb3-rmdp tune'."
            ) from None
        raise UsageError(
            f"'{PROG} tune' needs {error.name}, which is not installed: pip install 'sb3-rmdp[tune]'."
        ) from None
    return int(tuning.tune_main(argv) or 0)


def export_command(args: argparse.Namespace) -> int:
    from sb3_rmdp.export import export_representative, review_dossier

    if args.dossier and not args.env:
        raise UsageError("--dossier evaluates the representative: pass --env ID (and its --env-kwargs).")
    out = with_zip_suffix(args.out)
    outputs = [out, out.with_suffix(".json"), out.with_suffix(".md")] if args.dossier else [out]
    check_outputs([("--out", output) for output in outputs], args.overwrite)
    model = load_model(args.model, trusted=args.trust)
    if not 0 <= args.j < model.k:
        raise UsageError(f"-j {args.j}: the model has k={model.k} representatives; pass 0 <= J < {model.k}.")
    path = export_representative(model, args.j, args.out)
    agents = np.flatnonzero(model.assignment() == args.j)
    print(f"Representative {args.j} (serves agents {compact_indices(agents)}) written to {path}")
    base = model.export_arguments(1.0)[0]
    print(f"Load it anywhere with: {base.__module__.split('.')[0]}.{base.__name__}.load({str(path)!r})")
    if args.dossier:
        env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
        vec_env = evaluation_env(model, args.env, env_kwargs)
        dossier = review_dossier(model, args.j, vec_env, path, n_episodes=args.episodes)
        served = dossier["served_returns"]["mean"]
        print(
            f"Dossier written to {path.with_suffix('.json')} and {path.with_suffix('.md')} "
            f"(mean return of its agents: {'-' if served is None else f'{served:.4g}'})"
        )
    return 0


def read_results(paths: Sequence[pathlib.Path]) -> list[dict[str, str]]:
    """The rows of benchmark CSVs, checked for the columns ``report`` plots.

    :raises UsageError: naming the file and the missing columns.
    """
    rows: list[dict[str, str]] = []
    for path in paths:
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            columns = set(reader.fieldnames or [])
            if "welfare_eval" in columns:  # the old benchmark scripts' name of the welfare column
                columns.add("welfare")
            missing = [column for column in CSV_COLUMNS if column not in columns]
            if missing:
                raise UsageError(
                    f"{path} lacks the column(s) {', '.join(missing)}: a benchmark CSV has the columns "
                    f"{', '.join(CSV_COLUMNS)} (and optionally optimal_welfare or upper_bound)."
                )
            file_rows = [{"welfare": row.get("welfare_eval", ""), **row} for row in reader]
        if not file_rows:
            raise UsageError(f"{path} has no rows: run the benchmark first.")
        rows.extend(file_rows)
    for row in rows:
        try:
            float(row["welfare"])
            int(row["k"])
        except (TypeError, ValueError):
            raise UsageError(
                f"a row with k={row['k']!r}, welfare={row['welfare']!r}: both must be numbers."
            ) from None
    return rows


def report_command(args: argparse.Namespace) -> int:
    from sb3_rmdp.plotting import plot_assignment, plot_welfare_vs_k

    paths = [existing_file(path, "input") for path in args.inputs]
    csvs = [path for path in paths if path.suffix.lower() == ".csv"]
    if (csvs and len(csvs) != len(paths)) or (not csvs and len(paths) > 1):
        raise UsageError("report takes benchmark CSVs (any number) or one model zip, not both.")
    if csvs:
        rows = read_results(csvs)
        figure = plot_welfare_vs_k(rows, title=args.title, welfare_key="welfare")
        for algorithm in sorted({row["algorithm"] for row in rows}):
            ks = sorted({int(row["k"]) for row in rows if row["algorithm"] == algorithm})
            print(f"{algorithm}: k = {', '.join(map(str, ks))}")
    else:
        model = load_model(str(paths[0]), trusted=args.trust)
        params = model.agent_params
        if args.env:
            from sb3_rmdp.envs.vec_env import vec_env_agent_params

            params = vec_env_agent_params(
                evaluation_env(model, args.env, parse_key_values(args.env_kwargs, "--env-kwargs"))
            )
        figure = plot_assignment(model.assignment(), model.k, params, title=args.title)
    out = pathlib.Path(args.out)
    try:
        with atomic_write(out) as file:  # a failed plot leaves the previous image intact
            figure.savefig(file, dpi=150, format=out.suffix.lstrip(".").lower() or None)
    except ValueError as error:  # an unknown image format
        raise UsageError(f"cannot write {out}: {error}") from None
    print(f"Figure written to {out}")
    return 0


COMMANDS = {
    "train": train_command,
    "evaluate": evaluate_command,
    "export": export_command,
    "report": report_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sb3-rmdp`` with ``argv`` (default: the process's arguments) and return the exit code.

    :param argv: the arguments after the program name, e.g. ``["train", "--env", ID, "-k", "3"]``.
    :return: 0 on success, 2 on a user error (one line on stderr naming the fix; also argparse's usage
        errors), ``tune``'s own code for ``tune``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command == "tune":  # everything after "tune" belongs to the tuning CLI, --help included
            return tune_command(argv[1:])
        if command == "bench":  # the experiment runner's own CLI (sb3_rmdp.experiments.cli)
            from sb3_rmdp.experiments.cli import main as bench_main

            return bench_main(argv[1:])
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:  # --help (0) and usage errors (2); argparse printed the message
            return int(exit_.code or 0)
        import torch as th

        th.set_num_threads(args.torch_threads)
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"{PROG} {command}: error: {error}", file=sys.stderr)
        return 2
