"""Regenerate the committed plans and their .txt renderings.

    python plans/regenerate.py [--giants ../shared/giants] [NAME ...]

The bundled example is traced from examples/; each flagship checkpoint from a
header-accurate sparse copy that ../shared/giants/materialize.py writes into a
temporary folder (real headers, no data, almost no disk). CI does not need the
giants: `sanitrace retrace plans/*.msgpack` re-traces from the plans alone.
"""

import argparse
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANS = os.path.join(REPO, "plans")

# plan name -> (source: "examples/..." or a giants description, convert flags)
SOURCES = {
    "tiny-qwen3-moe": "examples/tiny-qwen3-moe",
    "deepseek-v3": "deepseek-v3",
    "kimi-k2-instruct": "kimi-k2-instruct",
    "qwen3-235b-a22b": "qwen3-235b-a22b",
    "gpt-oss-120b": "gpt-oss-120b",
    "minimax-m2": "minimax-m2",
    "glm-4.5": "glm-4.5",
    "mixtral-8x22b": "mixtral-8x22b",
    "qwen3-next-80b-a3b-instruct": "qwen3-next-80b-a3b-instruct",
}
VARIANTS = {"bf16": [], "q4": ["-q"]}
EXAMPLE_VARIANTS = ["q4"]


def sanitrace(*args: str, stdout=None) -> None:
    subprocess.run([sys.executable, "-m", "sanitrace", *args], check=True, cwd=REPO, stdout=stdout)


def regenerate(name: str, source: str) -> None:
    variants = EXAMPLE_VARIANTS if name.startswith("tiny-") else list(VARIANTS)
    for variant in variants:
        plan = os.path.join(PLANS, f"{name}-{variant}.msgpack")
        sanitrace("trace", source, "-o", plan, *VARIANTS[variant], stdout=subprocess.DEVNULL)
        with open(os.path.splitext(plan)[0] + ".txt", "w") as f:
            sanitrace("show", plan, stdout=f)
        print(f"{plan}: {os.path.getsize(plan):,} bytes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"Plans to regenerate (default all): {', '.join(SOURCES)}.")
    parser.add_argument("--giants", default=os.path.join(os.path.dirname(REPO), "shared", "giants"))
    args = parser.parse_args()
    unknown = set(args.names) - set(SOURCES)
    if unknown:
        parser.error(f"unknown plan names: {', '.join(sorted(unknown))}")
    for name in args.names or list(SOURCES):
        source = SOURCES[name]
        if source.startswith("examples/"):
            regenerate(name, source)
            continue
        with tempfile.TemporaryDirectory(prefix=f"sanitrace-{name}-") as folder:
            subprocess.run(
                [
                    sys.executable,
                    os.path.join(args.giants, "materialize.py"),
                    os.path.join(args.giants, source),
                    folder,
                    "--force",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            regenerate(name, folder)


if __name__ == "__main__":
    main()
