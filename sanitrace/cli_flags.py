"""The command line's flags: mlx_lm.convert's / mlx_vlm.convert's (same names and
defaults, and those sanitrace refuses), sanitrace's own, and the parser of every
command. Parsing never imports mlx, mlx-lm or mlx-vlm."""

import argparse

SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KB": 10**3,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MB": 10**6,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GB": 10**9,
    "GIB": 1 << 30,
    "T": 1 << 40,
    "TB": 10**12,
    "TIB": 1 << 40,
}


def parse_size(text: str) -> int:
    """'1.5G', '512MiB', '2GB', '1048576' -> bytes (K/M/G are powers of 1024)."""
    number = text.rstrip("BbKkMmGgTtIi ")
    unit = text[len(number) :].strip().upper()
    if unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"cannot read size {text!r}")
    try:
        return int(float(number) * SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read size {text!r}") from None


# mlx_vlm.convert flags sanitrace cannot honour, and what to do instead
REFUSED_FLAGS = {
    "quant_method": (
        "--quant-method awq",
        "AWQ calibration runs the model on data; sanitrace converts from "
        "headers and plans. Use --quant-method rtn (the default), or mlx_vlm.convert for AWQ",
    ),
    "calibration": (
        "--calibration",
        "it only applies to --quant-method awq, which sanitrace cannot honour; use mlx_vlm.convert for AWQ",
    ),
    "calibration_data": (
        "--calibration-data",
        "it only applies to --quant-method awq, which sanitrace cannot honour; use mlx_vlm.convert for AWQ",
    ),
    "mtp": (
        "--mtp",
        "sanitrace does not extract MTP drafters; convert without it, and run mlx_vlm.convert --mtp for the drafter",
    ),
    "mtp_output": (
        "--mtp-output",
        "sanitrace does not extract MTP drafters; convert without it, and run mlx_vlm.convert --mtp for the drafter",
    ),
}


def _add_model_flags(parser: argparse.ArgumentParser, positional_out: bool = False):
    """The model (positional, or mlx_lm.convert's --hf-path / --model) and, for
    convert, the output (positional, or --mlx-path, default mlx_model)."""
    parser.add_argument(
        "model_arg", nargs="?", metavar="MODEL", help="Hugging Face model folder, or Hub repo id org/name[@revision]."
    )
    if positional_out:
        parser.add_argument("out_arg", nargs="?", metavar="OUT", help="Output folder (must not exist).")
    parser.add_argument(
        "--hf-path",
        "--model",
        dest="hf_path",
        default=None,
        help="Path to the model: a local folder, or a Hub repo id (read by HTTP range, then streamed shard by shard).",
    )
    parser.add_argument(
        "--revision",
        default=None,
        help="Hub revision (branch, tag, commit); a local folder ignores it, as mlx_lm.convert does.",
    )


def _add_convert_flags(parser: argparse.ArgumentParser):
    """The flags of mlx_lm.convert / mlx_vlm.convert, with the same names and
    defaults. A recipe name is checked by the library that is traced (their
    lists differ), so that parsing never imports either library."""
    parser.set_defaults(subparser=parser)
    parser.add_argument(
        "--library",
        choices=["mlx_lm", "mlx_vlm"],
        default=None,
        help="Conversion to follow (default: mlx_vlm for vision/audio models, else mlx_lm).",
    )

    parser.add_argument("-q", "--quantize", action="store_true", help="Generate a quantized model.")
    parser.add_argument("--q-group-size", type=int, default=None, help="Group size for quantization.")
    parser.add_argument("--q-bits", type=int, default=None, help="Bits per weight for quantization.")
    parser.add_argument(
        "--q-mode", default="affine", choices=["affine", "mxfp4", "nvfp4", "mxfp8"], help="The quantization mode."
    )
    parser.add_argument(
        "--quant-predicate",
        default=None,
        help="Mixed-bit quantization recipe, e.g. mixed_3_6 (see the library's convert).",
    )
    parser.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="Type to save the non-quantized parameters.",
    )
    parser.add_argument("-d", "--dequantize", action="store_true", help="Dequantize a quantized model.")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="Allow a custom model file named by config.json."
    )
    refused = parser.add_argument_group("mlx_vlm.convert flags sanitrace refuses (one line says why)")
    refused.add_argument("--quant-method", choices=["rtn", "awq"], default=None, help="Only rtn (the default).")
    refused.add_argument("--calibration", choices=["text", "multimodal"], default=None, help=argparse.SUPPRESS)
    refused.add_argument("--calibration-data", default=None, help=argparse.SUPPRESS)
    refused.add_argument("--mtp", action="store_true", default=None, help="Refused: no MTP drafter extraction.")
    refused.add_argument("--mtp-output", default=None, help=argparse.SUPPRESS)


def _add_allow_unloadable(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--allow-unloadable",
        action="store_true",
        help="Write an output the library's own loader would refuse (the trace checks it), "
        "exactly as the library's convert writes it.",
    )
    parser.add_argument(
        "--allow-lint",
        action="append",
        default=[],
        metavar="RULE",
        help="Do not fail on this lint rule's errors (repeatable; the rules are in docs/lints.md).",
    )


def _add_execute_flags(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--memory-budget",
        type=parse_size,
        default=None,
        help="Peak memory to stay under, e.g. 2G (default: the plan's, 1 GiB).",
    )
    parser.add_argument(
        "--disk-budget",
        type=parse_size,
        default=None,
        help="Hub source: downloaded bytes to hold at once, e.g. 20G (default: the two "
        "largest shards, or what one output group needs).",
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="Run the output groups as Ray tasks (pip install 'sanitrace[ray]'): on a new local Ray "
        "instance, or on the cluster at ADDRESS (HOST:PORT). The source and output must be paths "
        "every node sees.",
    )
    parser.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="A local Ray instance's worker processes (default: this machine's cores).",
    )


def _add_verify_forward(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--verify-forward",
        action="store_true",
        help="Verify, then run one token through the loaded model (evaluates the weights it touches).",
    )


def build_parser(description: str) -> argparse.ArgumentParser:
    """The ``sanitrace`` parser: one subparser per command, ``description`` atop --help."""
    parser = argparse.ArgumentParser(prog="sanitrace", description=description)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("trace", help="Trace a conversion into a plan file (reads headers only).")
    _add_model_flags(p)
    p.add_argument("-o", "--output", required=True, help="Plan file to write.")
    _add_convert_flags(p)
    _add_allow_unloadable(p)
    p.add_argument(
        "--memory-budget",
        type=parse_size,
        default=None,
        help="Budget the plan's chunking and memory prediction assume (default 1 GiB).",
    )

    p = sub.add_parser("execute", help="Write the converted model described by a plan.")
    p.add_argument("plan", help="Plan file from `sanitrace trace`.")
    p.add_argument(
        "--source",
        required=True,
        help="The model folder the plan was traced from, or its Hub repo id org/name[@revision].",
    )
    p.add_argument("--out", required=True, help="Output folder (must not exist).")
    p.add_argument("--resume", action="store_true", help="Continue an interrupted run in OUT.partial.")
    p.add_argument(
        "--digest",
        default=None,
        metavar="HEX",
        help="Refuse to run unless the plan's digest (printed by `show`) is HEX.",
    )
    _add_execute_flags(p)
    p.add_argument(
        "--verify",
        action="store_true",
        help="After writing, check every shard header against the plan and open the output with "
        "the library's loader (lazy, strict, tokenizer/processor included).",
    )
    _add_verify_forward(p)

    p = sub.add_parser(
        "convert",
        help="trace + execute in one go; takes mlx_lm.convert's flags.",
        description="Convert like mlx_lm.convert / mlx_vlm.convert (same flags), in bounded "
        "memory: `sanitrace convert --hf-path MODEL --mlx-path OUT -q` or "
        "`sanitrace convert MODEL OUT -q`.",
    )
    _add_model_flags(p, positional_out=True)
    p.add_argument("--mlx-path", default=None, help="Path to save the MLX model (default: mlx_model).")
    p.add_argument(
        "--upload-repo",
        default=None,
        help="Upload the finished folder to this Hugging Face repo (the library's upload_to_hub).",
    )
    _add_convert_flags(p)
    _add_allow_unloadable(p)
    p.add_argument("--plan-out", default=None, metavar="FILE", help="Keep the executed plan in FILE.")
    p.add_argument("--resume", action="store_true", help="Continue an interrupted run in OUT.partial.")
    _add_execute_flags(p)
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="Skip the check after writing (shard headers against the plan, the library's lazy "
        "strict load with tokenizer/processor); it is on by default and reads headers only.",
    )
    _add_verify_forward(p)

    p = sub.add_parser("check", help="Convert with the library's own convert and with sanitrace; compare.")
    _add_model_flags(p)
    _add_convert_flags(p)
    p.add_argument("--memory-budget", type=parse_size, default=None, help="sanitrace's memory budget.")
    p.add_argument("--keep", default=None, help="Keep both outputs in this folder.")

    p = sub.add_parser("show", help="Render a plan as text for review.")
    p.add_argument("plan", help="Plan file.")
    p.add_argument("--full", action="store_true", help="Every tensor, with its file and offset.")
    p.add_argument("--format", choices=["text", "json"], default="text")

    p = sub.add_parser("lint", help="Lint plans for silent-corruption patterns (exit status 1 on an error finding).")
    p.add_argument("plans", nargs="+", metavar="PLAN", help="Plan files.")

    p = sub.add_parser("diff", help="Semantic diff of two plans (exit status 1 when they differ).")
    p.add_argument("old")
    p.add_argument("new")

    p = sub.add_parser(
        "retrace",
        help="Re-trace plans with the installed libraries, from the plans "
        "alone; report what would change (exit status 1 if anything).",
    )
    p.add_argument("plans", nargs="+", help="Plan files (a .txt rendering beside one is checked too).")
    p.add_argument("--write", action="store_true", help="Rewrite stale plans (and their .txt).")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="Allow remote code (never taken from the plan itself)."
    )
    return parser


class UsageError(Exception):
    """A flag sanitrace cannot honour, or a missing / conflicting model path."""


def options_from_args(args):
    """ConvertOptions from parsed convert flags; UsageError for a flag sanitrace
    cannot honour."""
    from .tracer import ConvertOptions

    for name, (flag, why) in REFUSED_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None and not (name == "quant_method" and value == "rtn"):
            raise UsageError(f"{flag} cannot be honoured: {why}")
    return ConvertOptions(
        args.quantize,
        args.q_group_size,
        args.q_bits,
        args.q_mode,
        args.quant_predicate,
        args.dtype,
        args.dequantize,
        args.trust_remote_code,
    )
