"""Output files: which tensor goes where, at which byte offset.

Shard membership and file names come from the library's own save code (the
trace captured them). Inside a shard, tensors are stored in name order (the
order of the header keys) after a header padded to 8 bytes, so every shard is
laid out the same way on every platform.
"""

from typing import List, Tuple

from ..plan import Output, OutputFile
from ..safetensors_format import MLX_TO_SAFETENSORS, build_header, mlx_nbytes


def nbytes(aval) -> int:
    """Bytes of a traced value of ``aval`` ([dtype, shape])."""
    return mlx_nbytes(*aval)


def output_files(shards: List[tuple], avals_of) -> Tuple[List[OutputFile], List[Output]]:
    """(files, outputs) for captured ``shards`` [(file name, [(name, ref)], metadata)].

    ``avals_of(ref)`` gives [dtype, shape] of a traced value.
    """
    files, outputs = [], []
    for file_index, (file_name, items, metadata) in enumerate(shards):
        entries = sorted((name, ref, avals_of(ref)) for name, ref in items)
        header, offsets = build_header(
            [(n, MLX_TO_SAFETENSORS[a[0]], a[1], nbytes(a)) for n, _, a in entries],
            metadata,
        )
        size = len(header)
        for (name, ref, aval), offset in zip(entries, offsets):
            outputs.append(Output(name, aval[0], tuple(aval[1]), ref, file_index, offset, nbytes(aval)))
            size = max(size, offset + nbytes(aval))
        files.append(OutputFile(file_name, "safetensors", size, metadata, header))
    return files, outputs
