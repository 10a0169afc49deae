"""sanitrace: trace mlx-lm / mlx-vlm conversions into reviewable plans and replay
them bit-identically in bounded memory.

The Python API (see sanitrace/api.py)::

    import sanitrace
    sanitrace.convert("path/to/hf-model", "mlx_model", quantize=True)
    plan = sanitrace.trace("path/to/hf-model", quantize=True, plan_out="plan.msgpack")
    sanitrace.execute(sanitrace.load_plan("plan.msgpack"), "path/to/hf-model", "mlx_model")

The API is imported on first use, after checking the installed mlx / mlx-lm
versions (sanitrace/versions.py), so an unsupported mlx gives one clear error.
"""

__version__ = "0.1.0"
__all__ = ["convert", "trace", "execute", "load_plan"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'sanitrace' has no attribute {name!r}")
    from .versions import check_installed

    check_installed()
    from . import api

    value = globals()[name] = getattr(api, name)  # checked once: later lookups find it here
    return value
