"""The two conversion libraries a trace can follow, and how to pick one.

Each entry names the library's own ``convert`` function (traced as it is), the
loader that reads its tokenizer or processor (run for real, so that the plan
holds the files its ``save_pretrained`` writes), how to import the model's
module before mlx is patched, and what the library copies besides the weights.
"""

import importlib
import json
import os
import pathlib
from dataclasses import dataclass
from typing import Callable, List, Optional

from ..safetensors_format import open_regular
from .proxy import TraceError


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

    def loaders(self) -> List[tuple]:
        """(module, attribute) of the tokenizer/processor loader its convert calls."""
        return [(importlib.import_module(self.loader_module), self.loader_name)]

    def create_model_card(self, out: str, hf_repo: str) -> None:
        """The library's README.md for a conversion of Hub repo ``hf_repo`` (it
        fetches the repo's card through huggingface_hub); TraceError when it cannot."""
        from ..hub import HubError, hub_errors

        try:
            with hub_errors(f"{hf_repo}: README.md"):
                importlib.import_module(f"{self.name}.utils").create_model_card(out, hf_repo)
        except HubError as e:
            raise TraceError(
                f"{e}: {self.name}.convert --hf-path {hf_repo} builds the output's model card "
                "from it and fails the same way (after writing the weights)"
            ) from None

    def recipes(self) -> List[str]:
        return list(getattr(importlib.import_module(self.convert_module), self.quant_recipes))

    def import_model_module(self, model_dir: str, config: dict) -> None:
        """Import the model's module now, with mlx unpatched, so that nothing it
        evaluates at import time (annotations, module constants) sees a stand-in.
        A model_type the library lacks is a TraceError naming config.json; any
        other failure is the library's, for the caller to report."""
        path = pathlib.Path(model_dir)
        utils = importlib.import_module(f"{self.name}.utils")
        try:
            if self.name == "mlx_lm":
                if config.get("model_file") is None:
                    utils._get_classes(utils.load_config(path))
            else:
                utils.get_model_and_args(config=utils.load_config(path), model_path=path)
        except ValueError as e:
            if not str(e).startswith("Model type "):
                raise
            raise TraceError(
                f"{path / 'config.json'}: {self.name} has no model_type "
                f"{config.get('model_type')!r:.120} ({str(e).splitlines()[0][:200]})"
            ) from None


LIBRARIES = {
    "mlx_lm": Library("mlx_lm", "mlx_lm.convert", "mlx_lm.utils", "load_tokenizer", False, "QUANT_RECIPES"),
    "mlx_vlm": Library("mlx_vlm", "mlx_vlm.convert", "mlx_vlm.utils", "load_processor", True, "QUANT_RECIPES"),
}

_MULTIMODAL_KEYS = ("vision_config", "audio_config", "vision_tower", "speech_config")


def read_config(model_dir: str) -> dict:
    """``model_dir``/config.json as a dict; TraceError naming it when it is not a
    regular file, cannot be read or is not a JSON object."""
    path = os.path.join(model_dir, "config.json")
    with open_regular(path, TraceError) as f:
        try:
            data = f.read()
        except OSError as e:
            raise TraceError(f"{path}: cannot read: {e.strerror}") from None
    try:
        config = json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise TraceError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:
        raise TraceError(f"{path}: not valid JSON: nested too deeply") from None
    if not isinstance(config, dict):
        raise TraceError(f"{path}: not a JSON object")
    return config


def choose_library(model_dir: str, config: Optional[dict] = None) -> str:
    """mlx_vlm for checkpoints with vision/audio towers or a *ForConditionalGeneration
    architecture (what mlx_vlm.convert is for), mlx_lm otherwise. ``config`` is
    read from ``model_dir`` when not given."""
    if config is None:
        config = read_config(model_dir)
    architectures = config.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    if any(k in config for k in _MULTIMODAL_KEYS) or any(
        isinstance(a, str) and a.endswith("ForConditionalGeneration") for a in architectures
    ):
        return "mlx_vlm"
    return "mlx_lm"
