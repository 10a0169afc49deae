"""Bad input gives one clear line naming the file (and the tensor), never a
traceback: malformed safetensors headers, special files, bad config.json,
unreadable files, failures inside the library, and plans that would make
retrace run code or write outside its folder."""

import json
import os
import shutil
import signal
import struct

import pytest

from sanitrace.cli import main
from sanitrace.fixtures import write_checkpoint
from sanitrace.safetensors_format import MAX_DIM, SafetensorsError, read_header


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad_input") / "llama"
    write_checkpoint(str(path), "llama")
    return path


@pytest.fixture
def model(llama, tmp_path):
    return shutil.copytree(llama, tmp_path / "model")


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO opened for reading blocks forever: fail instead."""

    def fail(*args):
        raise TimeoutError("blocked")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def fails(model, capsys, *flags) -> str:
    """Run `sanitrace trace` in process; it must fail with exactly one line."""
    code = main(["trace", str(model), "-o", str(model.parent / "plan.msgpack"), *flags])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("sanitrace trace: error: ")
    return err


def write_header(path, header: bytes):
    """A header-only safetensors file with ``header`` as its JSON."""
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def entry(dtype='"F32"', shape="[2]", offsets="[0, 8]") -> bytes:
    return f'{{"w": {{"dtype": {dtype}, "shape": {shape}, "data_offsets": {offsets}}}}}'.encode()


BAD_ENTRIES = {
    "dtype list": (entry(dtype='["F32"]'), "unknown dtype"),
    "dtype number": (entry(dtype="7"), "unknown dtype"),
    "dtype object": (entry(dtype='{"a": 1}'), "unknown dtype"),
    "dtype unknown": (entry(dtype='"F128"'), "unknown dtype"),
    "huge dim": (entry(shape=f"[{2**40}]", offsets=f"[0, {4 * 2**40}]"), "sizes 0..2147483647"),
    "dim 2^31": (entry(shape=f"[{2**31}]", offsets=f"[0, {4 * 2**31}]"), "shape"),
    "infinite dim": (entry(shape="[Infinity]"), "shape"),
    "nan dim": (entry(shape="[NaN]"), "shape"),
    "float dim": (entry(shape="[2.0]"), "shape"),
    "bool dim": (entry(shape="[true, 2]"), "shape"),
    "string dim": (entry(shape='["2"]'), "shape"),
    "negative dim": (entry(shape="[-2]"), "shape"),
    "shape not a list": (entry(shape="2"), "shape"),
    "too many dims": (entry(shape=str([1] * 65), offsets="[0, 4]"), "at most 64"),
    "infinite offset": (entry(offsets="[0, Infinity]"), "data_offsets"),
    "float offset": (entry(offsets="[0.0, 8]"), "data_offsets"),
    "bool offset": (entry(offsets="[false, 8]"), "data_offsets"),
    "negative offset": (entry(offsets="[-8, 0]"), "data_offsets"),
    "reversed offsets": (entry(offsets="[8, 0]"), "data_offsets"),
    "three offsets": (entry(offsets="[0, 4, 8]"), "data_offsets"),
    "huge offset": (entry(offsets=f"[{2**64}, {2**64 + 8}]"), "data_offsets"),
    "offsets do not match": (entry(offsets="[0, 12]"), "do not match"),
    "elements overflow": (
        entry(dtype='"F64"', shape=f"[{MAX_DIM}, {MAX_DIM}, {MAX_DIM}]", offsets=f"[0, {8 * MAX_DIM**3}]"),
        "data_offsets",
    ),
    "entry not an object": (b'{"w": [1, 2]}', "not an object"),
    "missing fields": (b'{"w": {"dtype": "F32"}}', "shape"),
    "overlap": (
        b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
        b' "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}',
        "overlap",
    ),
}

BAD_HEADERS = {
    "metadata not strings": (b'{"__metadata__": {"format": 1}}', "__metadata__"),
    "metadata a list": (b'{"__metadata__": ["pt"]}', "__metadata__"),
    "deep nesting": (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    "empty": (b"", "header is empty"),
    "blank": (b"        ", "header is empty"),
    "not utf-8": (b'{"w\xff": {}}', "not UTF-8"),
    "utf-16": ('{"w": {}}'.encode("utf-16"), "not UTF-8"),
    "not json": (b"{not json", "not valid JSON"),
    "not an object": (b"[1]", "not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_malformed_tensor_entry_names_file_and_tensor(case, model, capsys):
    header, message = BAD_ENTRIES[case]
    write_header(model / "model.safetensors", header)
    err = fails(model, capsys)
    assert "model.safetensors" in err and message in err
    assert "'w'" in err or "'v'" in err


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_malformed_header_names_the_file(case, model, capsys):
    header, message = BAD_HEADERS[case]
    write_header(model / "model.safetensors", header)
    err = fails(model, capsys)
    assert "model.safetensors" in err and message in err


def test_short_and_truncated_files(model, capsys):
    (model / "model.safetensors").write_bytes(b"abc")
    assert "too short" in fails(model, capsys)
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 100) + b"{}")
    assert "header truncated (2 of 100 bytes)" in fails(model, capsys)
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 2**40))
    assert "exceeds the 100000000 byte limit" in fails(model, capsys)


def test_large_tensors_mlx_can_hold_are_accepted(tmp_path):
    """Only what mlx cannot represent is refused: 2**32 elements are fine."""
    path = tmp_path / "big.safetensors"
    write_header(path, entry(dtype='"BF16"', shape="[65536, 65536]", offsets=f"[0, {2 * 2**32}]"))
    assert read_header(str(path)).tensors["w"].shape == (65536, 65536)
    write_header(path, entry(dtype='"U8"', shape=f"[{MAX_DIM}, 4]", offsets=f"[0, {4 * MAX_DIM}]"))
    assert read_header(str(path)).tensors["w"].nbytes == 4 * MAX_DIM


def test_tensor_too_large_for_a_placeholder_file(model, capsys, monkeypatch):
    """A file system refuses a sparse file of the largest tensor's size (ext4: 16 TiB)."""
    import errno

    real = os.truncate

    def truncate(path, length):
        if length > 2**32:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        return real(path, length)

    monkeypatch.setattr(os, "truncate", truncate)
    write_header(model / "model.safetensors", entry(dtype='"BF16"', shape="[65536, 65536]", offsets=f"[0, {2**33}]"))
    err = fails(model, capsys)
    assert "model.safetensors: tensor 'w' (8589934592 bytes) is too large for a placeholder file: File too large" in err


def test_duplicate_names_take_the_last_entry_like_mx_load(tmp_path):
    path = tmp_path / "dup.safetensors"
    write_header(
        path,
        b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},'
        b' "w": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}',
    )
    assert read_header(str(path)).tensors["w"].shape == (2,)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "extra.safetensors"])
def test_fifo_is_refused_without_opening_it(name, model, capsys):
    (model / name).unlink(missing_ok=True)
    os.mkfifo(model / name)
    err = fails(model, capsys)
    assert f"{name}: is a FIFO, not a regular file" in err


def test_fifo_is_refused_by_read_header(tmp_path):
    os.mkfifo(tmp_path / "x.safetensors")
    with pytest.raises(SafetensorsError, match="is a FIFO"):
        read_header(str(tmp_path / "x.safetensors"))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_directory_in_place_of_a_file(name, model, capsys):
    (model / name).unlink()
    (model / name).mkdir()
    assert f"{name}: is a directory, not a regular file" in fails(model, capsys)


def test_dangling_symlink_names_the_file_and_the_reason(model, capsys):
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(model / "nowhere")
    err = fails(model, capsys)
    assert "model.safetensors: cannot read: No such file or directory" in err


def test_read_header_reports_os_errors(tmp_path):
    with pytest.raises(SafetensorsError, match="missing.safetensors: cannot read: No such file"):
        read_header(str(tmp_path / "missing.safetensors"))


def edit_config(model, change):
    config = json.loads((model / "config.json").read_text())
    change(config)
    (model / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
        ('{"hidden_size": 64}', "no model_type"),
        ('{"model_type": 7}', "no model_type"),
    ],
)
def test_bad_config_json(text, message, model, capsys):
    (model / "config.json").write_text(text)
    err = fails(model, capsys)
    assert "config.json: " in err and message in err


def test_model_type_the_library_lacks(model, capsys):
    edit_config(model, lambda c: c.update(model_type="no_such_arch"))
    err = fails(model, capsys)
    assert "config.json: mlx_lm has no model_type 'no_such_arch'" in err


def test_config_missing_a_required_field(model, capsys):
    edit_config(model, lambda c: c.pop("hidden_size"))
    err = fails(model, capsys)
    assert "config.json: mlx_lm cannot build model_type 'llama' from this config" in err
    assert "hidden_size" in err


def test_failure_inside_the_library_names_its_line(model, capsys):
    edit_config(
        model, lambda c: c.update(quantization_config={"quant_method": "compressed-tensors", "format": "bogus"})
    )
    err = fails(model, capsys)
    assert "mlx_lm/utils.py:" in err and "unsupported compressed-tensors format 'bogus'" in err
    assert "eager conversion (mlx_lm.convert) fails the same way" in err


def add_model_file(model, body: str):
    (model / "custom_model.py").write_text(
        "import mlx.core as mx\nfrom mlx_lm.models.llama import Model as Base, ModelArgs\n\nclass Model(Base):\n" + body
    )
    edit_config(model, lambda c: c.update(model_file="custom_model.py"))


def test_model_file_needs_trust_remote_code(model, capsys, tmp_path):
    marker = tmp_path / "ran"
    add_model_file(model, f"    pass\n\nopen({str(marker)!r}, 'w').close()\n")
    err = fails(model, capsys)
    assert "config.json: model_file 'custom_model.py'" in err and "--trust-remote-code" in err
    assert not marker.exists()


def test_failing_mx_op_in_sanitize_names_the_model_code(model, capsys):
    add_model_file(
        model,
        "    def sanitize(self, weights):\n        return {k: mx.reshape(v, (3, 7)) for k, v in weights.items()}\n",
    )
    err = fails(model, capsys, "--trust-remote-code")
    assert "the model folder's own code in mlx_lm" in err
    assert "custom_model.py:6 (<dictcomp>): ValueError: [reshape]" in err
    assert "eager conversion (mlx_lm.convert --trust-remote-code) fails the same way" in err


def test_a_sanitrace_bug_keeps_its_traceback(model, monkeypatch, capsys):
    import sanitrace.tracer.sources

    monkeypatch.setattr(sanitrace.tracer.sources, "read_header", None)
    assert main(["trace", str(model), "-o", str(model.parent / "plan.msgpack")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "'NoneType' object is not callable" in err
    assert err.strip().splitlines()[-1].endswith("please report it with the command and the traceback above")


@pytest.fixture(scope="module")
def llama_plan(llama):
    from sanitrace.planner import build_plan
    from sanitrace.tracer import ConvertOptions, trace

    return build_plan(trace(str(llama), ConvertOptions()))


def with_source(plan, read_files=None, options=None):
    import dataclasses

    source = plan.source._replace(read_files=read_files or plan.source.read_files)
    return dataclasses.replace(plan, source=source, options=options or plan.options)


def test_plans_carry_no_model_code(model, capsys):
    from sanitrace.planner import build_plan
    from sanitrace.tracer import ConvertOptions, trace

    add_model_file(model, "    pass\n")
    plan = build_plan(trace(str(model), ConvertOptions(trust_remote_code=True)))
    assert sorted(plan.source.read_files) == ["config.json", "generation_config.json"]


def test_retrace_never_runs_code_from_a_plan(llama_plan, tmp_path):
    from sanitrace.plan import PlanError
    from sanitrace.retrace import retrace

    marker = tmp_path / "ran"
    config = json.loads(llama_plan.source.read_files["config.json"])
    config["model_file"] = "custom_model.py"
    code = f"open({str(marker)!r}, 'w').close()\n".encode()
    plan = with_source(
        llama_plan,
        read_files={"config.json": json.dumps(config).encode(), "custom_model.py": code},
        options=dict(llama_plan.options, trust_remote_code=True),
    )
    for trust in (False, True):
        with pytest.raises(PlanError, match="needs remote code") as error:
            retrace(plan, trust_remote_code=trust)
        assert "\n" not in str(error.value) and "--trust-remote-code" in str(error.value)
    assert not marker.exists()
    plan = with_source(llama_plan, read_files=dict(llama_plan.source.read_files, **{"custom_model.py": code}))
    with pytest.raises(PlanError, match="'custom_model.py' is not a data file"):
        retrace(plan)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../escape.json", "/tmp/escape.json", "a//b.json", "", "a\0.json"])
def test_retrace_writes_only_inside_its_folder(name, llama_plan, tmp_path):
    from sanitrace.plan import PlanError
    from sanitrace.retrace import rebuild_source, retrace

    plan = with_source(llama_plan, read_files=dict(llama_plan.source.read_files, **{name: b"{}"}))
    with pytest.raises(PlanError):
        retrace(plan)
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    with pytest.raises(PlanError):
        rebuild_source(plan, str(folder))
    assert not (tmp_path / "a" / "escape.json").exists() and os.listdir(folder) == []


def test_retrace_takes_trust_remote_code_from_its_caller_only(llama_plan, monkeypatch):
    import sanitrace.retrace

    seen = []
    real = sanitrace.retrace.trace
    monkeypatch.setattr(sanitrace.retrace, "trace", lambda d, o, lib: seen.append(o) or real(d, o, lib))
    plan = with_source(llama_plan, options=dict(llama_plan.options, trust_remote_code=True))
    fresh = sanitrace.retrace.retrace(plan)
    assert seen[0].trust_remote_code is False
    assert fresh.options == plan.options
