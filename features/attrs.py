"""Root attributes of a store: Python values to what HDF5 stores, and back."""

import os

import h5py
import numpy as np

from features.schema import ORIGIN_EXTRACT

STRING_DTYPE = h5py.string_dtype("utf-8")


def attr_to_hdf5(key: str, value: object) -> object:
    """Convert one root attribute to a value HDF5 can store (None -> "", paths -> str, lists -> arrays)."""
    if value is None:
        return ""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (bool, int, float, str, np.generic)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(np.asarray(value, dtype=object).ravel())
        if all(isinstance(item, str) for item in items):
            return np.array(items, dtype=STRING_DTYPE)
        if all(isinstance(item, (int, float, np.number)) and not isinstance(item, bool) for item in items):
            as_float = key in ("mean", "std") or any(isinstance(item, (float, np.floating)) for item in items)
            return np.asarray(value, dtype=np.float64 if as_float else np.int64)
    raise ValueError(f"attribute {key!r} = {value!r:.80} cannot be stored; use None, a string, a number "
                     "or a list of strings or numbers")


def normalize_attr(key: str, value: object) -> object:
    """The Python value `value` reads back as after being stored (used to compare configs)."""
    return attr_to_python(attr_to_hdf5(key, value))


def attr_to_python(value: object) -> object:
    """Convert an HDF5 attribute value to plain Python (numpy scalars -> numbers, arrays -> lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [attr_to_python(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(h5file: h5py.File) -> dict:
    """Return the root attributes of an open store as a dict of plain Python values."""
    return {key: attr_to_python(value) for key, value in h5file.attrs.items()}


def store_origin(attrs: dict) -> str:
    """Where a store's features come from: "import" or "extract" (also for stores older than the attribute)."""
    return str(attrs.get("origin") or ORIGIN_EXTRACT)
