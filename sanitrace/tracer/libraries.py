"""The two conversion libraries a trace can follow, and how to pick one.

Each entry names the library's own ``convert`` function (traced as it is), the
loader that would read a tokenizer or processor (replaced by a stand-in: a plan
never needs one, and the executor copies those files verbatim), how to import
the model's module before mlx is patched, and what the library copies besides
the weights.
"""

import importlib
import json
import os
import pathlib
from dataclasses import dataclass
from typing import Callable, List


class _NoTokenizer:
    """Stands in for the tokenizer/processor: their files are copied verbatim."""

    def save_pretrained(self, path):
        pass


def _no_tokenizer(*args, **kwargs):
    return _NoTokenizer()


@dataclass(frozen=True)
class Library:
    name: str
    convert_module: str
    loader_module: str  # where the tokenizer/processor loader is looked up
    loader_name: str
    copies_subdirectories: bool  # mlx_vlm copies every sub-folder of the source
    quant_recipes: str  # module attribute listing --quant-predicate recipes

    def convert(self) -> Callable:
        return importlib.import_module(self.convert_module).convert

    def stubs(self) -> List[tuple]:
        """(module, attribute, value) patches that skip tokenizer/processor loading."""
        return [(importlib.import_module(self.loader_module), self.loader_name, _no_tokenizer)]

    def recipes(self) -> List[str]:
        return list(getattr(importlib.import_module(self.convert_module), self.quant_recipes))

    def import_model_module(self, model_dir: str) -> None:
        """Import the model's module now, with mlx unpatched, so that nothing it
        evaluates at import time (annotations, module constants) sees a stand-in."""
        path = pathlib.Path(model_dir)
        try:
            if self.name == "mlx_lm":
                utils = importlib.import_module("mlx_lm.utils")
                config = utils.load_config(path)
                if config.get("model_file") is None:
                    utils._get_classes(config)
            else:
                utils = importlib.import_module("mlx_vlm.utils")
                utils.get_model_and_args(config=utils.load_config(path), model_path=path)
        except Exception:  # noqa: BLE001  the conversion itself reports these, as eager does
            pass


LIBRARIES = {
    "mlx_lm": Library("mlx_lm", "mlx_lm.convert", "mlx_lm.utils", "load_tokenizer", False, "QUANT_RECIPES"),
    "mlx_vlm": Library("mlx_vlm", "mlx_vlm.convert", "mlx_vlm.utils", "load_processor", True, "QUANT_RECIPES"),
}

_MULTIMODAL_KEYS = ("vision_config", "audio_config", "vision_tower", "speech_config")


def choose_library(model_dir: str) -> str:
    """mlx_vlm for checkpoints with vision/audio towers or a *ForConditionalGeneration
    architecture (what mlx_vlm.convert is for), mlx_lm otherwise."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    architectures = config.get("architectures") or []
    if any(k in config for k in _MULTIMODAL_KEYS) or any(
        a.endswith("ForConditionalGeneration") for a in architectures
    ):
        return "mlx_vlm"
    return "mlx_lm"
