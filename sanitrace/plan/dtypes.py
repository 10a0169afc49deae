"""mlx dtypes by name: the names a plan stores (``"bfloat16"``) and back.

The facts about each safetensors dtype (its size, what mx.load gives, what
mx.save_safetensors writes) are one table, ``safetensors_format.DTYPES``;
this module only turns its names into ``mx.Dtype`` objects.
"""

from typing import Dict, Optional, Tuple

import mlx.core as mx

from ..safetensors_format import READ_DTYPE_NAMES

_DTYPE_NAMES: Dict[mx.Dtype, str] = {}


def dtype_name(dtype) -> str:
    """'bfloat16' for mx.bfloat16."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).rsplit(".", 1)[-1]
    return name


def mlx_dtype(name: str) -> Optional[mx.Dtype]:
    """The mx dtype ``dtype_name`` gives ``name`` (mx.bool_ for "bool"), or None."""
    value = getattr(mx, "bool_" if name == "bool" else name, None)
    return value if isinstance(value, mx.Dtype) else None


def known_dtype(name: str) -> mx.Dtype:
    """``mlx_dtype`` of a name already checked to be an mlx dtype."""
    dtype = mlx_dtype(name)
    assert dtype is not None, f"not an mlx dtype: {name!r}"
    return dtype


# safetensors dtype -> (mx dtype to read its bytes into, the mx dtype mx.load gives),
# for every dtype mx.load reads
READ_DTYPES: Dict[str, Tuple[mx.Dtype, mx.Dtype]] = {
    st: (known_dtype(raw), known_dtype(loaded)) for st, (raw, loaded) in READ_DTYPE_NAMES.items()
}
