"""The package's own state as data, and the checks that let ``RMDPPPO.load`` run no code from a file.

SB3's zip stores each attribute in the ``data`` JSON; what JSON cannot hold, SB3 pickles with
cloudpickle (a ``:serialized:`` entry), and unpickling runs whatever code the file names. ``RMDPPPO.save``
writes instead, for every attribute it knows (numpy arrays and generators, torch tensors, generators and
optimizers, gymnasium spaces, SB3's schedules, the assigner and its whole state, the global random
states), a data entry: ``{":rmdp:": 1, "value": ...}`` with arrays as base64 of their raw bytes plus
dtype and shape. Reading one back creates no object but plain containers, arrays, tensors and a few
known classes; a class named in the file is imported only from sb3-rmdp, SB3, sb3-contrib, torch and
gymnasium unless the file is trusted. What the package cannot write as data (a schedule that is a
user's function, a policy class of the user's own module...) is left to SB3's pickling, and a default
load refuses such a file, naming the entries: ``trusted=True`` or ``custom_objects`` opt in.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import importlib
import io
import json
import os
import pathlib
import zipfile
import zlib
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common import utils as sb3_utils

from sb3_rmdp.assigners.base import UNSAVED_ATTRIBUTES

#: key of a data entry written by this module, and its format version
MARK = ":rmdp:"
FORMAT = 1
#: modules whose classes a file may name without being trusted
TRUSTED_MODULES = ("sb3_rmdp", "stable_baselines3", "sb3_contrib", "torch", "gymnasium")
#: SB3's schedule classes, stored as their attributes (names absent from older SB3 versions are skipped)
_SCHEDULES = tuple(
    getattr(sb3_utils, name)
    for name in ("FloatSchedule", "ConstantSchedule", "LinearSchedule")
    if hasattr(sb3_utils, name)
)
# The pickled torch part of `Assigner.__getstate__`: data never holds it.
_ASSIGNER_TORCH_BLOB = "_torch_state"
_ARRAY_KINDS = "biufcmMSU"  # every dtype but objects and raw records


class Unencodable(TypeError):
    """A value this module cannot write as data (SB3 pickles it instead)."""


class ModelFileError(ValueError):
    """A model file that cannot be loaded: damaged, of another kind, or untrusted."""


class UntrustedFileError(ModelFileError):
    """Loading the file would run code from it (pickles), or import a module it names."""


# ---------------------------------------------------------------------------------------------- encoding
def encode_field(value: Any) -> dict[str, Any]:
    """``value`` as a JSON-ready data entry of the ``data`` file.

    :raises Unencodable: if some part of it is not data this module knows.
    """
    return {MARK: FORMAT, "value": _encode(value)}


def is_encoded_field(item: Any) -> bool:
    return isinstance(item, dict) and MARK in item and "value" in item


def is_pickled_field(item: Any) -> bool:
    return isinstance(item, dict) and ":serialized:" in item


def _class_name(cls: type) -> str:
    if "<locals>" in cls.__qualname__:
        raise Unencodable(f"{cls.__qualname__} is defined inside a function: it has no importable name")
    return f"{cls.__module__}:{cls.__qualname__}"


def _array(array: np.ndarray) -> dict[str, Any]:
    if array.dtype.kind not in _ARRAY_KINDS:
        raise Unencodable(f"an array of dtype {array.dtype}")
    return {
        ":ndarray:": base64.b64encode(array.tobytes(order="C")).decode("ascii"),
        "dtype": array.dtype.str,
        "shape": list(array.shape),
    }


def _encode(value: Any) -> Any:
    from sb3_rmdp.assigners.base import Assigner

    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, np.generic):
        if value.dtype.kind not in _ARRAY_KINDS:
            raise Unencodable(f"a numpy scalar of dtype {value.dtype}")
        return {":npscalar:": _array(np.asarray(value))}
    if isinstance(value, th.Tensor):
        try:
            array = value.detach().cpu().numpy()
        except TypeError as error:  # e.g. bfloat16, which numpy does not have
            raise Unencodable(str(error)) from None
        return {
            ":tensor:": _array(array),
            "parameter": isinstance(value, th.nn.Parameter),
            "requires_grad": bool(value.requires_grad),
        }
    if type(value) is list:
        return [_encode(item) for item in value]
    if type(value) is tuple:
        return {":tuple:": [_encode(item) for item in value]}
    if type(value) is collections.deque:
        return {":deque:": [_encode(item) for item in value], "maxlen": value.maxlen}
    if type(value) in (dict, collections.OrderedDict):
        if all(isinstance(key, str) and not key.startswith(":") for key in value):
            return {key: _encode(item) for key, item in value.items()}
        return {":dict:": [[_encode(key), _encode(item)] for key, item in value.items()]}
    if isinstance(value, th.device):
        return {":device:": str(value)}
    if isinstance(value, th.Generator):
        return {":torch_generator:": str(value.device), "state": _encode(value.get_state())}
    if isinstance(value, np.random.Generator):
        bit_generator = value.bit_generator
        return {":np_generator:": type(bit_generator).__name__, "state": _encode(bit_generator.state)}
    if isinstance(value, type):
        return {":class:": _class_name(value)}
    if isinstance(value, spaces.Space):
        return _encode_space(value)
    if isinstance(value, Assigner):
        return _encode_assigner(value)
    if type(value) in _SCHEDULES:
        return {":schedule:": type(value).__name__, "state": _encode(vars(value))}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: _encode(getattr(value, field.name)) for field in dataclasses.fields(value)}
        return {":dataclass:": _class_name(type(value)), "fields": fields}
    raise Unencodable(f"an object of type {type(value).__module__}.{type(value).__qualname__}")


def _encode_space(space: spaces.Space) -> dict[str, Any]:
    kind = type(space)
    if kind is spaces.Box:
        assert isinstance(space, spaces.Box)
        return {":space:": "Box", "low": _array(space.low), "high": _array(space.high)}
    if kind is spaces.Discrete:
        assert isinstance(space, spaces.Discrete)
        return {":space:": "Discrete", "n": int(space.n), "start": int(space.start)}
    if kind is spaces.MultiDiscrete:
        assert isinstance(space, spaces.MultiDiscrete)
        return {":space:": "MultiDiscrete", "nvec": _array(space.nvec), "start": _array(space.start)}
    if kind is spaces.MultiBinary:
        assert isinstance(space, spaces.MultiBinary)
        return {":space:": "MultiBinary", "n": _encode(space.n)}
    if kind is spaces.Dict:
        assert isinstance(space, spaces.Dict)
        return {":space:": "Dict", "spaces": [[key, _encode_space(sub)] for key, sub in space.spaces.items()]}
    if kind is spaces.Tuple:
        assert isinstance(space, spaces.Tuple)
        return {":space:": "Tuple", "spaces": [_encode_space(sub) for sub in space.spaces]}
    raise Unencodable(f"a {kind.__name__} space")


def _encode_assigner(assigner: Any) -> dict[str, Any]:
    state = {key: value for key, value in vars(assigner).items() if key not in UNSAVED_ATTRIBUTES}
    # An optimizer is stored as its state dict and the names of the attributes it optimizes.
    names = {id(value): key for key, value in state.items() if isinstance(value, th.Tensor)}
    encoded: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, th.optim.Optimizer):
            try:
                groups = [[names[id(param)] for param in group["params"]] for group in value.param_groups]
            except KeyError:
                raise Unencodable(
                    f"the optimizer {key} optimizes a tensor the assigner does not hold"
                ) from None
            encoded[key] = {
                ":optimizer:": _class_name(type(value)),
                "params": groups,
                "state_dict": _encode(value.state_dict()),
            }
        else:
            encoded[key] = _encode(value)
    return {":assigner:": _class_name(type(assigner)), "state": encoded}


# ---------------------------------------------------------------------------------------------- decoding
def decode_field(item: dict[str, Any], trusted: bool = False) -> Any:
    """The value of a data entry written by :func:`encode_field`.

    :param trusted: import the classes the entry names from any module (default: only from
        :data:`TRUSTED_MODULES`).
    :raises UntrustedFileError: for a class of another module when not ``trusted``.
    :raises ModelFileError: for an entry this version cannot read.
    """
    if item.get(MARK) != FORMAT:
        raise ModelFileError(
            f"a data entry of format {item.get(MARK)!r}; this sb3-rmdp reads format {FORMAT}: update it."
        )
    return _Decoder(trusted).decode(item["value"])


def resolve_class(name: str, trusted: bool, base: type | None = None) -> type:
    """The class ``"module:qualname"``, imported only from :data:`TRUSTED_MODULES` unless ``trusted``.

    :raises UntrustedFileError: for another module when not ``trusted``.
    :raises ModelFileError: when the name is not a class (of ``base``), or cannot be imported.
    """
    module_name, _, qualname = str(name).partition(":")
    if not trusted and module_name.split(".")[0] not in TRUSTED_MODULES:
        raise UntrustedFileError(
            f"the file names the class {name}, and importing its module {module_name} runs that module's "
            f"code: pass trusted=True (--trust on the command line) if you trust the file, or "
            "custom_objects={...} with the objects to use instead"
        )
    try:
        value: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as error:
        raise ModelFileError(f"the file names the class {name}, which cannot be imported ({error})") from None
    if not isinstance(value, type) or (base is not None and not issubclass(value, base)):
        expected = "a class" if base is None else f"a subclass of {base.__name__}"
        raise ModelFileError(f"the file names {name} where {expected} is expected")
    return value


class _Decoder:
    def __init__(self, trusted: bool):
        self.trusted = trusted

    def decode(self, item: Any) -> Any:
        if isinstance(item, list):
            return [self.decode(value) for value in item]
        if not isinstance(item, dict):
            return item
        if ":ndarray:" in item:
            return _decode_array(item)
        if ":npscalar:" in item:
            return _decode_array(item[":npscalar:"])[()]
        if ":tensor:" in item:
            tensor = th.from_numpy(_decode_array(item[":tensor:"]))
            if item.get("parameter"):
                return th.nn.Parameter(tensor, requires_grad=bool(item.get("requires_grad", True)))
            return tensor.requires_grad_(bool(item.get("requires_grad", False)))
        if ":tuple:" in item:
            return tuple(self.decode(value) for value in item[":tuple:"])
        if ":deque:" in item:
            return collections.deque((self.decode(value) for value in item[":deque:"]), maxlen=item["maxlen"])
        if ":dict:" in item:
            return {_hashable(self.decode(key)): self.decode(value) for key, value in item[":dict:"]}
        if ":device:" in item:
            return th.device(item[":device:"])
        if ":torch_generator:" in item:
            generator = th.Generator(device=item[":torch_generator:"])
            generator.set_state(self.decode(item["state"]))
            return generator
        if ":np_generator:" in item:
            return self._np_generator(item)
        if ":class:" in item:
            return resolve_class(item[":class:"], self.trusted)
        if ":space:" in item:
            return self._space(item)
        if ":assigner:" in item:
            return self._assigner(item)
        if ":schedule:" in item:
            return self._schedule(item)
        if ":dataclass:" in item:
            cls = resolve_class(item[":dataclass:"], self.trusted)
            if not dataclasses.is_dataclass(cls):
                raise ModelFileError(f"the file names {item[':dataclass:']} where a dataclass is expected")
            return cls(**{key: self.decode(value) for key, value in item["fields"].items()})
        return {key: self.decode(value) for key, value in item.items()}

    def _schedule(self, item: dict[str, Any]) -> Any:
        by_name = {cls.__name__: cls for cls in _SCHEDULES}
        if item[":schedule:"] not in by_name:
            raise ModelFileError(f"an unknown schedule {item[':schedule:']!r}")
        state = self.decode(item["state"])
        # A schedule holds numbers, or (FloatSchedule) the schedule it wraps: nothing else gets called.
        for value in state.values():
            if not isinstance(value, (int, float, *_SCHEDULES)) or isinstance(value, bool):
                raise ModelFileError(f"a schedule holding {type(value).__name__}, not numbers")
        schedule = object.__new__(by_name[item[":schedule:"]])
        vars(schedule).update(state)
        return schedule

    def _np_generator(self, item: dict[str, Any]) -> np.random.Generator:
        name = item[":np_generator:"]
        if name not in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
            raise ModelFileError(f"an unknown numpy bit generator {name!r}")
        bit_generator = getattr(np.random, name)()
        bit_generator.state = self.decode(item["state"])
        return np.random.Generator(bit_generator)

    def _space(self, item: dict[str, Any]) -> spaces.Space:
        kind = item[":space:"]
        if kind == "Box":
            low, high = _decode_array(item["low"]), _decode_array(item["high"])
            return spaces.Box(low=low, high=high, dtype=low.dtype)
        if kind == "Discrete":
            return spaces.Discrete(int(item["n"]), start=int(item["start"]))
        if kind == "MultiDiscrete":
            nvec = _decode_array(item["nvec"])
            return spaces.MultiDiscrete(nvec, dtype=nvec.dtype, start=_decode_array(item["start"]))
        if kind == "MultiBinary":
            return spaces.MultiBinary(self.decode(item["n"]))
        if kind == "Dict":
            return spaces.Dict({key: self._space(sub) for key, sub in item["spaces"]})
        if kind == "Tuple":
            return spaces.Tuple([self._space(sub) for sub in item["spaces"]])
        raise ModelFileError(f"an unknown space {kind!r}")

    def _assigner(self, item: dict[str, Any]) -> Any:
        from sb3_rmdp.assigners.base import Assigner

        cls = resolve_class(item[":assigner:"], self.trusted, base=Assigner)
        encoded: dict[str, Any] = item["state"]
        state = {
            key: self.decode(value)
            for key, value in encoded.items()
            if not (isinstance(value, dict) and ":optimizer:" in value)
        }
        for key, value in encoded.items():
            if isinstance(value, dict) and ":optimizer:" in value:
                optimizer_class = resolve_class(value[":optimizer:"], self.trusted, base=th.optim.Optimizer)
                groups = [{"params": [state[name] for name in names]} for names in value["params"]]
                optimizer = optimizer_class(groups)
                optimizer.load_state_dict(self.decode(value["state_dict"]))
                state[key] = optimizer
        if _ASSIGNER_TORCH_BLOB in state:  # read by `th.load(weights_only=False)`: never from data
            raise ModelFileError(f"an assigner state with a {_ASSIGNER_TORCH_BLOB!r} entry")
        assigner: Any = object.__new__(cls)
        assigner.__setstate__(state)
        if "device" in state:
            assigner.device = th.device("cpu")  # tensors are read onto the CPU; `bind` moves them
        return assigner


def _decode_array(item: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(item["dtype"])
    if dtype.kind not in _ARRAY_KINDS:
        raise ModelFileError(f"an array of dtype {dtype}, which a model file never holds")
    return np.frombuffer(base64.b64decode(item[":ndarray:"]), dtype=dtype).reshape(item["shape"]).copy()


def _hashable(key: Any) -> Any:
    return tuple(_hashable(part) for part in key) if isinstance(key, list) else key


# ---------------------------------------------------------------------------------------------- model files
def read_model_bytes(path: str | os.PathLike[str] | io.BufferedIOBase) -> tuple[bytes, str]:
    """The bytes of a model file and a name for messages (SB3's rule: ``path`` or else ``path.zip``).

    :raises FileNotFoundError: naming the path.
    """
    if isinstance(path, (str, os.PathLike)):
        file = pathlib.Path(path)
        if not file.is_file() and file.suffix == "" and pathlib.Path(f"{file}.zip").is_file():
            file = pathlib.Path(f"{file}.zip")
        if not file.is_file():
            also = f" (nor {path}.zip)" if file.suffix == "" else ""
            raise FileNotFoundError(f"No model file at {path}{also}: check the path.")
        return file.read_bytes(), str(file)
    return path.read(), getattr(path, "name", "the model file")


def read_model_data(raw: bytes, name: str) -> dict[str, Any]:
    """The ``data`` JSON of an SB3 zip, after checking every entry of the zip against its CRC.

    Nothing is unpickled.

    :raises ModelFileError: for a damaged file (not a zip, truncated, a bad CRC, unreadable JSON) or a
        zip that is not an SB3 model.
    """
    damaged = (
        f"{name} is damaged and cannot be read ({{}}); it was probably cut short or altered: save the "
        "model again, or restore it from a copy."
    )
    if not raw.startswith(b"PK"):
        raise ModelFileError(
            f"{name} is not a zip file, so not a model: pass a zip written by 'sb3-rmdp train' or "
            "RMDPPPO.save."
        )
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise ModelFileError(damaged.format(f"its entry {bad!r} fails its CRC check"))
            if "data" not in archive.namelist():
                raise ModelFileError(
                    f"{name} is a zip but not an SB3 model (no 'data' entry): pass a file written by "
                    "RMDPPPO.save or 'sb3-rmdp train'."
                )
            text = archive.read("data").decode("utf-8")
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, OSError) as error:
        raise ModelFileError(damaged.format(f"{type(error).__name__}: {error}")) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelFileError(damaged.format(f"its 'data' entry is not valid JSON: {error}")) from None
    if not isinstance(data, dict):
        raise ModelFileError(damaged.format("its 'data' entry is not a JSON object"))
    return data


def saved_algorithm(data: dict[str, Any]) -> str:
    """The package algorithm that wrote ``data`` (files written before the name was stored: ``RMDPPPO``)."""
    return str(data.get("_rmdp_algorithm", "RMDPPPO"))


def check_rmdp_data(data: dict[str, Any], name: str, algorithm: str = "RMDPPPO") -> None:
    """Fail with what the file is when it is not a model of ``algorithm``.

    :param algorithm: the loading class's :attr:`~sb3_rmdp.core.RMDPAlgorithm.algorithm_name`.
    :raises ModelFileError: for a plain SB3 model, or a model of another of the package's algorithms.
    """
    if "k" in data and "n_agents" in data:
        saved = saved_algorithm(data)
        if saved != algorithm:
            raise ModelFileError(
                f"{name} is an {saved} model, not an {algorithm} one: load it with {saved}.load, or with "
                "sb3_rmdp.load_model, which picks the class the file names."
            )
        return
    if all(key in data for key in ("n_steps", "n_epochs", "clip_range")):
        raise ModelFileError(
            f"{name} is a plain SB3 PPO model (one policy, no representatives or agents), not an {algorithm} "
            f"model: load it with stable_baselines3.PPO.load, or pass a file written by {algorithm}.save."
        )
    raise ModelFileError(
        f"{name} is an SB3 model of another algorithm, not an {algorithm} model: load it with its own "
        f"class, or pass a file written by {algorithm}.save."
    )


def untrusted_message(name: str, keys: list[str], old_format: bool) -> str:
    """The error of a default load of a file with pickled entries ``keys``."""
    listed = ", ".join(keys)
    if old_format:
        why = (
            f"{name} was saved by an sb3-rmdp older than its data format: its state ({listed}) is pickled, "
            "and unpickling runs any code the file holds."
        )
        instead = "custom_objects={...} with an object for each of these entries"
    else:
        why = f"{name} holds pickled objects ({listed}), and unpickling runs any code the file holds."
        instead = f"custom_objects={{...}} with an object for each of {listed}"
    return (
        f"{why} If you trust the file, pass trusted=True to RMDPPPO.load (--trust on the command line), or "
        f"{instead}; saving a trusted file again writes it as data (see the Security page of the docs)."
    )


def decode_model_data(
    data: dict[str, Any], name: str, trusted: bool, custom_objects: dict[str, Any] | None
) -> dict[str, Any]:
    """``custom_objects`` for SB3's ``load``: the user's, plus every data entry decoded.

    :raises UntrustedFileError: when pickled entries remain that neither ``trusted`` nor
        ``custom_objects`` covers, or a class of an untrusted module is named.
    """
    objects = dict(custom_objects or {})
    pickled = []
    for key, item in data.items():
        if key in objects:
            continue
        if is_encoded_field(item):
            try:
                objects[key] = decode_field(item, trusted)
            except UntrustedFileError as error:
                raise UntrustedFileError(f"{name}: entry {key!r}: {error}.") from None
            except ModelFileError as error:
                raise ModelFileError(f"{name}: entry {key!r}: {error}.") from None
            except (KeyError, TypeError, ValueError) as error:
                raise ModelFileError(
                    f"{name} is damaged: its entry {key!r} cannot be read ({type(error).__name__}: {error}); "
                    "save the model again, or restore it from a copy."
                ) from None
        elif is_pickled_field(item):
            pickled.append(key)
    if pickled and not trusted:
        old_format = not any(is_encoded_field(item) for item in data.values())
        raise UntrustedFileError(untrusted_message(name, pickled, old_format))
    return objects
