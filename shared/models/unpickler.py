"""Unpickling a model with an allow-list: only the classes a model is made of, never a callable
that runs a command, evaluates text or opens files.

A pickle names every global it needs (module + name) and calls it: `os.system`,
`builtins.eval` or `subprocess.Popen` in a model file would run with the server's rights. This
unpickler resolves a global only when the object it names is
- a class defined in scikit-learn, XGBoost, NumPy, SciPy or pandas, outside their file, I/O,
  test and code-generation modules (a `numpy.memmap` or `xgboost.DMatrix` opens files), or
- a plain builtin container or number type (dict, list, slice, ...), or
- one of the reconstruction helpers those libraries pickle with (NumPy's `_reconstruct`,
  Cython's `__pyx_unpickle_*`, NumPy's random-generator constructors), or a NumPy ufunc.
Anything else is refused before it is called. It narrows what a hostile file can do; the
manifest's HMAC (shared/models/signing.py) is what says who wrote the file.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from typing import Any

import numpy as np

from shared.errors import ModelIntegrityError

LIBRARIES = ("sklearn", "xgboost", "numpy", "scipy", "pandas")
# Parts of those libraries whose classes read or write files, run code or open sockets.
DENIED_MODULE_PARTS = frozenset({
    "io", "testing", "_testing", "f2py", "distutils", "ctypeslib", "_datasource", "npyio",
    "_npyio_impl", "computation", "datasets", "tracker", "dask", "spark", "collective",
    "federated", "_lib", "plotting", "clipboard", "callback", "testing_utils", "conftest",
    "tests", "externals", "parallel", "_memmapping_reducer", "lib2def",
})
DENIED_CLASSES = frozenset({
    "numpy.memmap", "xgboost.core.DMatrix", "xgboost.core.QuantileDMatrix",
    "xgboost.core.ExtMemQuantileDMatrix", "xgboost.core.DataIter",
})
BUILTIN_TYPES = frozenset({
    "dict", "list", "tuple", "set", "frozenset", "slice", "complex", "bytearray", "bytes",
    "str", "int", "float", "bool", "range", "object",
})
# Functions (not classes) the libraries' own pickles call to rebuild their objects.
HELPERS = frozenset({
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.internals.blocks", "new_block"),
    ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"),
    ("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle"),
    ("pandas._libs.tslibs.nattype", "__nat_unpickle"),
    ("pandas._libs.tslibs.nattype", "_nat_unpickle"),
    ("pandas.core.indexes.datetimes", "_new_DatetimeIndex"),
    ("pandas.core.indexes.period", "_new_PeriodIndex"),
    ("pandas", "NA"), ("pandas._libs.missing", "NA"),
})


def _library_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] in LIBRARIES and not DENIED_MODULE_PARTS.intersection(parts[1:])


def allowed(module: str, name: str, obj: Any) -> bool:
    """Whether the global `module.name`, resolved to `obj`, may be used by a model's pickle."""
    if (module, name) in HELPERS:
        return True
    if isinstance(obj, np.ufunc):
        return True
    if isinstance(obj, type):
        qualified = f"{obj.__module__}.{obj.__qualname__}"
        if obj.__module__ == "builtins":
            return obj.__qualname__ in BUILTIN_TYPES
        if qualified in DENIED_CLASSES or issubclass(obj, np.memmap):
            return False
        return _library_module(obj.__module__) and _library_module(module)
    # Cython's generated unpickle helpers of the libraries' own extension types.
    return (name.startswith("__pyx_unpickle_") and "." not in name
            and _library_module(module) and getattr(obj, "__module__", None) == module)


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals `allowed` accepts."""

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name, super().find_class)


def _resolve(module: str, name: str, find: Any) -> Any:
    # Python 2 names (protocol 2's __builtin__.slice), mapped as pickle maps them, so
    # that what is checked is what is resolved.
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    try:
        obj = find(module, name) if _importable(module) else None
    except (ImportError, AttributeError):
        obj = None
    if obj is None or not allowed(module, name, obj):
        raise ModelIntegrityError(
            f"refusing to unpickle {module}.{name}: not a class a scikit-learn or "
            "XGBoost model is made of"
        )
    return obj


def restricted_joblib_load(path: str) -> Any:
    """A pickle or a joblib file (compressed by joblib or not) read by joblib's own
    unpickler with the same allow-list. joblib writes each array's bytes after its
    NumpyArrayWrapper, the one global it adds; an object array is a nested pickle whose
    globals joblib sends through this unpickler's find_class. Files of joblib before 0.10
    (arrays in companion files) are refused."""
    from joblib import numpy_pickle

    class _JoblibUnpickler(numpy_pickle.NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == ("joblib.numpy_pickle", "NumpyArrayWrapper"):
                return numpy_pickle.NumpyArrayWrapper
            return _resolve(module, name, super().find_class)

    with open(path, "rb") as fh, \
            numpy_pickle._validate_fileobject_and_memmap(fh, path, None) as (stream, _):
        if isinstance(stream, str):
            raise ModelIntegrityError("a joblib file older than joblib 0.10 (arrays in "
                                      "companion files): save the model again")
        return _JoblibUnpickler(path, stream, True).load()


def _importable(module: str) -> bool:
    # Only the libraries' modules are imported at all: importing a module can run code.
    top = module.split(".")[0]
    return top in LIBRARIES or top in ("builtins", "copyreg", "collections", "_codecs")


def restricted_loads(payload: bytes) -> Any:
    """Unpickle bytes, refusing every global outside the allow-list (ModelIntegrityError)."""
    return RestrictedUnpickler(io.BytesIO(payload)).load()
