"""Regenerate the committed plans, their .txt renderings and the refusals.

    python plans/regenerate.py [--giants ../shared/giants] [NAME ...]

The bundled example is traced from examples/; each flagship checkpoint from a
header-accurate sparse copy that ../shared/giants/materialize.py writes into a
temporary folder (real headers, no data, almost no disk). A plan is traced
with the library a user's ``convert`` would take (mlx_vlm for a vision model,
else mlx_lm) unless its entry names one. Where a library refuses a release,
what ``sanitrace trace`` says is kept in ``NAME.refused.txt``, so that an
upstream fix shows up as a diff. CI does not need the giants for the plans:
`sanitrace retrace plans/*.msgpack` re-traces from the plans alone
(tests/test_committed_plans.py; the refusals need ../shared/giants).
"""

import argparse
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, NamedTuple, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANS = os.path.join(REPO, "plans")
VARIANTS = {"bf16": [], "q4": ["-q"]}


class Entry(NamedTuple):
    source: str  # "examples/..." or a ../shared/giants description
    flags: List[str]  # extra trace flags (a library)
    variants: Tuple[str, ...] = ("bf16", "q4")


# plan name -> what it is traced from
SOURCES: Dict[str, Entry] = {
    "tiny-qwen3-moe": Entry("examples/tiny-qwen3-moe", [], ("q4",)),
    "deepseek-v3": Entry("deepseek-v3", []),
    "kimi-k2-instruct": Entry("kimi-k2-instruct", []),
    "qwen3-235b-a22b": Entry("qwen3-235b-a22b", []),
    "gpt-oss-120b": Entry("gpt-oss-120b", []),
    "minimax-m2": Entry("minimax-m2", []),
    "glm-4.5": Entry("glm-4.5", []),
    "mixtral-8x22b": Entry("mixtral-8x22b", []),
    "qwen3-next-80b-a3b-instruct": Entry("qwen3-next-80b-a3b-instruct", []),
    # the 2026 flagships (issue 16); DeepSeek-V4-Flash is refused (REFUSED)
    "qwen3.5-397b-a17b": Entry("qwen3.5-397b-a17b", []),
    "kimi-k2.6": Entry("kimi-k2.6", [], ("bf16",)),  # mlx_vlm; its -q output would not load (REFUSED)
    "kimi-k2.6-mlx_lm": Entry("kimi-k2.6", ["--library", "mlx_lm"], ("q4",)),  # the text model, which loads
    "glm-5.1-fp8": Entry("glm-5.1-fp8", []),
    "minimax-m2.7": Entry("minimax-m2.7", []),
    "gemma-4-26b-a4b": Entry("gemma-4-26b-a4b", []),
    "gemma-4-31b": Entry("gemma-4-31b", []),
}

# name -> (giants description, the (library, variant) traces that are refused)
REFUSED: Dict[str, Tuple[str, List[Tuple[str, str]]]] = {
    "deepseek-v4-flash": (
        "deepseek-v4-flash",
        [("mlx_lm", "bf16"), ("mlx_vlm", "bf16"), ("mlx_vlm", "q4")],
    ),
    "kimi-k2.6": ("kimi-k2.6", [("mlx_vlm", "q4")]),
    "glm-5.1-fp8": ("glm-5.1-fp8", [("mlx_vlm", "bf16"), ("mlx_vlm", "q4")]),
}


def sanitrace(*args: str, stdout=None) -> None:
    subprocess.run([sys.executable, "-m", "sanitrace", *args], check=True, cwd=REPO, stdout=stdout)


def regenerate(name: str, entry: Entry, source: str) -> None:
    for variant in entry.variants:
        plan = os.path.join(PLANS, f"{name}-{variant}.msgpack")
        sanitrace("trace", source, "-o", plan, *entry.flags, *VARIANTS[variant], stdout=subprocess.DEVNULL)
        with open(os.path.splitext(plan)[0] + ".txt", "w") as f:
            sanitrace("show", plan, stdout=f)
        print(f"{plan}: {os.path.getsize(plan):,} bytes", flush=True)


def refusal_text(name: str, source: str, refused: List[Tuple[str, str]]) -> str:
    """The error ``sanitrace trace`` gives for each refused (library, variant), the
    checkpoint folder named ``name`` (warnings left out); exits when one is no longer refused."""
    parts = []
    for library, variant in refused:
        argv = ["trace", name, "--library", library, *VARIANTS[variant]]
        run = subprocess.run(
            [sys.executable, "-m", "sanitrace", *argv, "-o", os.devnull],
            cwd=os.path.dirname(source),
            capture_output=True,
            text=True,
        )
        if run.returncode == 0:
            raise SystemExit(f"{name}: {library} {variant} now converts; move it to SOURCES")
        lines = run.stderr.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("sanitrace trace: error")), 0)
        said = [line for line in lines[start:] if not line.startswith(("[transformers]", "sanitrace: warning"))]
        said = [line.replace(os.path.dirname(source) + os.sep, "") for line in said]  # the temporary folder
        parts.append(f"$ sanitrace {' '.join(argv)}\n" + "\n".join(said) + "\n")
    return "\n".join(parts)


def materialized(giants: str, description: str, folder: str) -> str:
    """``folder``/``description`` written from ../shared/giants; returns its path."""
    path = os.path.join(folder, description)
    script = os.path.join(giants, "materialize.py")
    argv = [sys.executable, script, os.path.join(giants, description), path, "--force"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = sorted(set(SOURCES) | set(REFUSED))
    parser.add_argument("names", nargs="*", help=f"What to regenerate (default all): {', '.join(names)}.")
    parser.add_argument("--giants", default=os.path.join(os.path.dirname(REPO), "shared", "giants"))
    args = parser.parse_args()
    unknown = set(args.names) - set(names)
    if unknown:
        parser.error(f"unknown plan names: {', '.join(sorted(unknown))}")
    for name in args.names or names:
        entry = SOURCES.get(name)
        if entry and entry.source.startswith("examples/"):
            regenerate(name, entry, entry.source)
            continue
        with tempfile.TemporaryDirectory(prefix=f"sanitrace-{name}-") as folder:
            if entry:
                regenerate(name, entry, materialized(args.giants, entry.source, folder))
            if name in REFUSED:
                description, refused = REFUSED[name]
                source = materialized(args.giants, description, folder)
                path = os.path.join(PLANS, f"{name}.refused.txt")
                with open(path, "w") as f:
                    f.write(refusal_text(description, source, refused))
                print(f"{path}: {len(refused)} refusals", flush=True)


if __name__ == "__main__":
    main()
