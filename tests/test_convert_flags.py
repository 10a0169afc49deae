"""Issue 12, acceptance 1: `sanitrace convert` takes `mlx_lm.convert`'s and
`mlx_vlm.convert`'s flags verbatim.

The flags come from the libraries' own parsers (`configure_parser()`): every
option is classified below as exercised, refused or not exercised (upload needs
the Hub), and the test fails when a library gains an option, a choice or a
spelling that is not. Every combination runs through the library's own command
(its `main()` with `sys.argv` in the library's spelling; all combinations of a
library in one process, tests/eager_batch.py) and through `sanitrace.cli.main`
(in process). When the library converts, sanitrace's output must be identical
(tensors, config.json, index); when the library refuses, sanitrace refuses with
the library's message, one line, no traceback, no output folder; an argparse
error exits 2 with a usage message, like the library. A few refusals also run
as real `python -m sanitrace convert` subprocesses: what users see.

Sources: for mlx_lm examples/tiny-qwen3-moe, its eager `-q` output (an
MLX-quantized source), a generated FP8 DeepSeek-V3 and a generated Qwen3-MoE of
width 128 (so that groups of 128 apply); for mlx_vlm the corpus' tiny Qwen2-VL
(skipped when ../shared/corpus is absent) and its eager `-q` output.
"""

import importlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import pytest
from conftest import REPO, SHARED, SOURCE_FIXTURES, make_checkpoint

from sanitrace.cli import main as sanitrace_main
from sanitrace.compare import compare_folders

pytestmark = pytest.mark.slow  # the libraries' own conversion is the oracle

# (the packages export a `convert` function that hides the module of that name)
PARSERS = {lib: importlib.import_module(f"{lib}.convert").configure_parser() for lib in ("mlx_lm", "mlx_vlm")}
EXAMPLE = REPO / "examples" / "tiny-qwen3-moe"
VISION = SHARED / "corpus" / "cases" / "vlm-qwen2_vl"

OK, ERROR, USAGE = "ok", "error", "usage"  # the library converts / raises (exit 1) / argparse error (exit 2)

# Every option of the libraries' parsers, by dest.
EXERCISED = {
    "hf_path",
    "mlx_path",
    "quantize",
    "q_group_size",
    "q_bits",
    "q_mode",
    "quant_predicate",
    "dtype",
    "dequantize",
    "trust_remote_code",
    "revision",
    "quant_method",
}
NOT_EXERCISED = {
    "help": "argparse's own -h",
    "upload_repo": "needs the Hugging Face Hub (sanitrace runs the library's upload after converting)",
}
REFUSED = {"calibration", "calibration_data", "mtp", "mtp_output"}  # plus the choices below
SUPPORTED_CHOICES = {"quant_method": {"rtn"}}  # a choices-flag partly supported: the other choices are refused

WIDE = dict(hidden=128, intermediate=256, moe_intermediate=128)  # every group size divides some input width
VALID_BITS = (1, 2, 3, 4, 5, 6, 8)  # mx.quantize's affine bits
VALID_GROUP_SIZES = (32, 64, 128)
ALL_RECIPES = sorted(
    set(PARSERS["mlx_lm"]._option_string_actions["--quant-predicate"].choices)
    | set(PARSERS["mlx_vlm"]._option_string_actions["--quant-predicate"].choices)
)


def _action(library: str, dest: str):
    return next((a for a in PARSERS[library]._actions if a.dest == dest), None)


def _choices(library: str, dest: str) -> list:
    return list(_action(library, dest).choices)


@dataclass(frozen=True)
class Combo:
    library: str
    flags: Tuple[str, ...]  # the library's spelling, besides the model and output paths
    source: str = "model"  # "model" (the library's fixture), "q4" (its eager -q output), "fp8", "wide"
    form: str = "standard"  # how the paths are given: standard | model_alias | positional | default_out
    expect: str = OK  # what the library itself does

    @property
    def id(self) -> str:
        text = " ".join(self.flags) or "no flags"
        if self.form != "standard":
            text += f" ({self.form.replace('_', ' ')})"
        if self.source != "model":
            text += f" ({self.source} source)"
        return f"{self.library}: {text}"

    def paths(self, src: str, out: str) -> list:
        if self.form == "model_alias":
            return ["--model", src, "--mlx-path", out]
        if self.form == "default_out":
            return ["--hf-path", src]
        return ["--hf-path", src, "--mlx-path", out]

    def library_argv(self, src: str, out: str) -> list:
        return [*self.paths(src, out), *self.flags]  # a positional form is sanitrace's only

    def sanitrace_argv(self, src: str, out: str) -> list:
        paths = [src, out] if self.form == "positional" else self.paths(src, out)
        return ["convert", *paths, *self.flags]


def combos_for(library: str) -> list:
    def c(*flags, **kw):
        return Combo(library, flags, **kw)

    # mlx_lm's fixture has hidden 64 and experts' width 64: nothing in it takes groups of 128
    wide = "wide" if library == "mlx_lm" else "model"
    combos = [
        c(),
        c(form="model_alias"),
        c(form="positional"),
        c(form="default_out"),
        c("-q"),
        c("--quantize"),
        c("-q", form="positional"),
        c("-q", form="default_out"),
        *[c("-q", "--q-bits", str(b)) for b in VALID_BITS],
        *[c("-q", "--q-group-size", str(g), source=wide) for g in VALID_GROUP_SIZES],
        *[c("-q", "--q-mode", m) for m in _choices(library, "q_mode")],
        *[
            c("-q", "--quant-predicate", r, expect=OK if r in _choices(library, "quant_predicate") else USAGE)
            for r in ALL_RECIPES
        ],
        *[c("--dtype", d) for d in _choices(library, "dtype")],
        c("-q", "--dtype", "float32"),
        c("-q", "--q-bits", "8", "--q-group-size", "32"),
        c("-q", "--q-mode", "mxfp8", "--q-bits", "8", "--q-group-size", "32"),
        c("-q", "--q-mode", "nvfp4", "--q-group-size", "16"),
        c("-q", "--quant-predicate", "mixed_3_6", "--q-group-size", "32"),
        c("--q-bits", "8"),  # without -q: no effect
        c("--quant-predicate", "mixed_3_6"),  # without -q: no effect
        c("-d"),  # a bf16 source: nothing to dequantize
        c("-d", source="q4"),
        c("--dequantize", source="q4"),
        c("-d", "--dtype", "float16", source="q4"),
        c("--trust-remote-code"),
        # mlx_lm refuses a recipe with a non-affine mode; mlx_vlm converts it
        c("-q", "--q-mode", "mxfp4", "--quant-predicate", "mixed_3_6", expect=ERROR if library == "mlx_lm" else OK),
        # the library refuses these
        c("-q", "-d", expect=ERROR),
        c("--quantize", "--dequantize", source="q4", expect=ERROR),
        c("-q", "--q-bits", "7", expect=ERROR),
        c("-q", "--q-group-size", "16", expect=ERROR),
        c("-q", "--q-mode", "mxfp4", "--q-group-size", "64", expect=ERROR),
        c("-q", "--q-mode", "mxfp4", "--q-bits", "8", expect=ERROR),
        c("-q", "--q-mode", "foo", expect=USAGE),
        c("--dtype", "int8", expect=USAGE),
        c("-q", "--q-bits", "x", expect=USAGE),
        c("-q", "--quant-predicate", "mixed_9_9", expect=USAGE),
    ]
    if library == "mlx_lm":
        combos.append(c("-d", source="fp8"))
    if _action(library, "revision"):  # mlx_vlm's parser has --revision; mlx_lm's does not
        combos += [c("--revision", "main"), c("-q", "--revision", "main")]
    if _action(library, "quant_method"):
        combos += [c("-q", "--quant-method", m) for m in sorted(SUPPORTED_CHOICES["quant_method"])]
    return combos


def refused_for(library: str) -> list:
    """Flags sanitrace refuses (one per combination, so the error names it)."""
    combos = []
    for dest in sorted(REFUSED | set(SUPPORTED_CHOICES)):
        action = _action(library, dest)
        if action is None:
            continue
        flag = action.option_strings[-1]
        if action.choices:
            values = [v for v in action.choices if v not in SUPPORTED_CHOICES.get(dest, ())]
            combos += [Combo(library, ("-q", flag, v)) for v in values]
        elif action.nargs == 0:
            combos.append(Combo(library, (flag,)))
        else:
            combos.append(Combo(library, (flag, action.dest.upper())))  # a relative path that is not there
    return combos


COMBOS = {library: combos_for(library) for library in PARSERS}
REFUSED_COMBOS = {library: refused_for(library) for library in PARSERS}
ALL = [c for library in PARSERS for c in COMBOS[library]]
# refusals also run as `python -m sanitrace convert` subprocesses
USER_VIEW = [
    "mlx_lm: -q -d",
    "mlx_lm: -q --q-bits 7",
    "mlx_lm: -q --q-mode mxfp4 --quant-predicate mixed_3_6",
    "mlx_lm: -q --q-mode foo",
    "mlx_lm: -q --quant-predicate mixed_3_5",
    "mlx_vlm: -q -d",
]
BY_ID = {c.id: c for c in ALL}
assert len(BY_ID) == len(ALL), "combination ids must be unique"


# -- every option of the libraries is classified and covered ------------------


def _used(combos) -> set:
    """(option string, value-or-None) pairs the combinations spell."""
    pairs = set()
    for combo in combos:
        argv = combo.library_argv("SRC", "OUT")
        for i, arg in enumerate(argv):
            if arg.startswith("-"):
                pairs.add((arg, None))
                if i + 1 < len(argv):
                    pairs.add((arg, argv[i + 1]))
    return pairs


@pytest.mark.parametrize("library", sorted(PARSERS))
def test_every_library_option_is_classified_and_exercised(library):
    used = _used([c for c in COMBOS[library] if c.expect == OK])  # converted, not only refused
    refused = _used(REFUSED_COMBOS[library])
    for action in PARSERS[library]._actions:
        dest, strings = action.dest, action.option_strings
        classes = [
            name
            for name, group in (("exercised", EXERCISED), ("not exercised", NOT_EXERCISED), ("refused", REFUSED))
            if dest in group
        ]
        assert len(classes) == 1, (
            f"{library}.convert option {strings} ({dest}) is not classified: add it to EXERCISED (with "
            f"combinations), REFUSED or NOT_EXERCISED in {Path(__file__).name}"
        )
        if dest in EXERCISED:
            for s in strings:
                assert (s, None) in used, f"{library}: {s} is never exercised"
            supported = SUPPORTED_CHOICES.get(dest, action.choices or ())
            for value in supported:
                assert (strings[-1], value) in used, f"{library}: {strings[-1]} {value} is never exercised"
            for value in set(action.choices or ()) - set(supported):
                assert (strings[-1], value) in refused, f"{library}: {strings[-1]} {value} is never refused"
        elif dest in REFUSED:
            assert (strings[-1], None) in refused, f"{library}: {strings[-1]} is never refused"
            for value in action.choices or ():
                assert (strings[-1], value) in refused, f"{library}: {strings[-1]} {value} is never refused"


def test_sanitrace_convert_help_lists_the_supported_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        sanitrace_main(["convert", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for library, parser in PARSERS.items():
        for action in parser._actions:
            if action.dest in EXERCISED or action.dest in NOT_EXERCISED:
                for s in action.option_strings:
                    assert re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text), f"{library}'s {s} not in --help"
            if action.choices and action.dest in EXERCISED and action.dest != "quant_predicate":
                for value in SUPPORTED_CHOICES.get(action.dest, action.choices):
                    assert value in text, f"{library}'s {action.option_strings[-1]} {value} not in --help"


# -- the library's own conversion, all combinations of a library in one process


def _model_source(library: str) -> Path:
    if library == "mlx_lm":
        return EXAMPLE
    if not (VISION / "config.json").exists():
        pytest.skip("../shared/corpus is not present (the mlx_vlm fixture is its tiny Qwen2-VL)")
    return VISION


@pytest.fixture(scope="module")
def library_runs(tmp_path_factory):
    """library_runs(library) -> (results by combination id, sources); run once per library."""
    cache = {}

    def run(library: str):
        if library in cache:
            return cache[library]
        model = _model_source(library)
        base = tmp_path_factory.mktemp(f"eager-{library}")
        sources = {"model": str(model), "q4": str(base / "source-q4")}
        if library == "mlx_lm":
            spec = dict(SOURCE_FIXTURES["deepseek_v3_fp8"])
            sources["fp8"] = str(make_checkpoint(base / "source-fp8", spec.pop("arch"), **spec))
            sources["wide"] = str(make_checkpoint(base / "source-wide", "qwen3_moe", **WIDE))
        jobs = [
            {"id": "source-q4", "argv": ["--hf-path", str(model), "--mlx-path", sources["q4"], "-q"], "cwd": str(base)}
        ]
        for i, combo in enumerate(COMBOS[library]):
            cwd = base / f"c{i:03d}"
            cwd.mkdir()
            jobs.append(
                {
                    "id": combo.id,
                    "argv": combo.library_argv(sources[combo.source], str(cwd / "mlx_model")),
                    "cwd": str(cwd),
                }
            )
        (base / "jobs.json").write_text(json.dumps(jobs))
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "tests" / "eager_batch.py"),
                library,
                str(base / "jobs.json"),
                str(base / "results.json"),
            ],
            capture_output=True,
            text=True,
            cwd=base,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = {r["id"]: r for r in json.loads((base / "results.json").read_text())}
        assert results["source-q4"]["status"] == OK, results["source-q4"]
        for job in jobs:
            results[job["id"]]["out"] = Path(job["cwd"]) / "mlx_model"
        cache[library] = results, sources
        return cache[library]

    return run


def _sanitrace(argv: list, capfd) -> Tuple[int, str]:
    capfd.readouterr()
    try:
        code = sanitrace_main(argv)
    except SystemExit as e:
        code = e.code
    return code, capfd.readouterr().err


def _lines(text: str) -> list:
    return [line for line in text.splitlines() if line.strip()]


def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _assert_identical(eager_out: Path, ours: Path):
    assert compare_folders(str(eager_out), str(ours)) == []
    assert _json(ours / "config.json") == _json(eager_out / "config.json")
    assert _json(ours / "model.safetensors.index.json") == _json(eager_out / "model.safetensors.index.json")


def _library_message(result: dict) -> str:
    """The library's error text without argparse's `prog: error: ` prefix."""
    message = result["message"]
    if result["status"] == "exit":
        message = message.split("error: ", 1)[-1]
    return message


def _assert_refused_like_the_library(combo: Combo, result: dict, code: int, err: str, out: Path):
    message = _library_message(result)
    assert "Traceback" not in err, err
    assert not out.exists() and not Path(str(out) + ".partial").exists(), "a refused conversion left a folder"
    if combo.expect == ERROR:
        assert code == 1, f"exit status {code}, expected 1; stderr: {err!r}"
        assert len(_lines(err)) == 1, f"expected one stderr line, got: {err!r}"
        assert err.startswith("sanitrace convert: error:"), err
        assert message in err, f"expected the library's message {message!r}, got {err!r}"
    else:
        assert code == 2, f"exit status {code}, expected 2 (argparse); stderr: {err!r}"
        assert "usage:" in err, err
        assert message in _lines(err)[-1], f"expected the library's message {message!r}, got {err!r}"


@pytest.mark.parametrize("combo", ALL, ids=[c.id for c in ALL])
def test_flag_combination(combo, library_runs, tmp_path, monkeypatch, capfd):
    results, sources = library_runs(combo.library)
    result = results[combo.id]
    status = {"ok": OK, "error": ERROR, "exit": USAGE}[result["status"]]
    assert status == combo.expect, f"{combo.library}.convert's outcome changed: {result['message'] or 'it converts'}"
    eager_out = result["out"]
    if combo.expect == OK:  # the library did what the flags say (mlx_vlm's -d keeps config's "quantization")
        names = _json(eager_out / "model.safetensors.index.json")["weight_map"]
        quantized = any(name.endswith(".scales") for name in names)
        assert quantized == ("-q" in combo.flags or "--quantize" in combo.flags), "the flags did not take"

    monkeypatch.chdir(tmp_path)  # the default --mlx-path, mlx_model, lands here
    ours = tmp_path / "mlx_model"
    code, err = _sanitrace(combo.sanitrace_argv(sources[combo.source], str(ours)), capfd)
    if combo.expect == OK:
        assert code == 0, f"sanitrace refused what {combo.library}.convert converts: {err[-2000:]}"
        _assert_identical(eager_out, ours)
    else:
        _assert_refused_like_the_library(combo, result, code, err, ours)


# -- what users see: real processes ------------------------------------------


def _run_cli(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sanitrace", *argv], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("combo_id", USER_VIEW)
def test_library_refusal_as_users_see_it(combo_id, library_runs, tmp_path):
    combo = BY_ID[combo_id]
    results, sources = library_runs(combo.library)
    assert combo.expect != OK and results[combo.id]["status"] != OK
    out = tmp_path / "out"
    proc = _run_cli(combo.sanitrace_argv(sources[combo.source], str(out)), tmp_path)
    _assert_refused_like_the_library(combo, results[combo.id], proc.returncode, proc.stderr, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the refused command wrote files"


REFUSED_ALL = [c for library in PARSERS for c in REFUSED_COMBOS[library]]


@pytest.mark.parametrize("combo", REFUSED_ALL, ids=[c.id for c in REFUSED_ALL])
def test_unsupported_flag_is_refused_in_one_line(combo, tmp_path):
    src = _model_source(combo.library)
    out = tmp_path / "out"
    proc = _run_cli(combo.sanitrace_argv(str(src), str(out)), tmp_path)
    flag = next(f for f in combo.flags if f.startswith("--"))
    assert proc.returncode == 1, f"exit status {proc.returncode}, expected 1; stderr: {proc.stderr!r}"
    assert len(_lines(proc.stderr)) == 1, f"expected one stderr line, got: {proc.stderr!r}"
    assert proc.stderr.startswith("sanitrace convert: error:"), proc.stderr
    assert re.search(rf"{re.escape(flag)}(?![\w-])", proc.stderr), f"the error does not name {flag}: {proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the refused command wrote files"
