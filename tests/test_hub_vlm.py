"""mlx_vlm from a Hub repo: its download takes the sub-folders' data files and its
convert copies the sub-folders; sanitrace's output has the same folder."""

import subprocess
import sys

from hub_server import HubServer
from test_hub_stream import env_for, sanitrace

from sanitrace.compare import compare_folders
from sanitrace.fixtures import write_checkpoint

REPO = "org/tiny-vl"


def test_sub_folders_of_a_hub_repo_are_copied_as_mlx_vlm_does(tmp_path):
    src = tmp_path / "repo"
    write_checkpoint(str(src), "llama")
    (src / "README.md").write_text("---\nlicense: mit\n---\n# tiny-vl\n")  # the card eager builds on
    (src / "extra" / "deep").mkdir(parents=True)
    (src / "extra" / "notes.txt").write_text("kept by mlx_vlm.convert")
    (src / "extra" / "deep" / "settings.json").write_text('{"a": 1}')
    (src / "extra" / "weights.bin").write_bytes(b"\0" * 64)  # not in mlx_vlm's download patterns
    with HubServer({REPO: str(src)}) as hub:
        eager = subprocess.run(
            [sys.executable, "-m", "mlx_vlm", "convert", "--hf-path", REPO, "--mlx-path", str(tmp_path / "eager")],
            env=env_for(hub, tmp_path / "hf-eager"),
            capture_output=True,
            text=True,
        )
        assert eager.returncode == 0, eager.stderr[-2000:]
        proc = sanitrace(
            "convert",
            "--hf-path",
            REPO,
            "--mlx-path",
            "out",
            "--library",
            "mlx_vlm",
            "--no-progress",
            env=env_for(hub, tmp_path / "hf"),
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert (out / "extra" / "deep" / "settings.json").read_text() == '{"a": 1}'
    assert (out / "extra" / "notes.txt").exists() and not (out / "extra" / "weights.bin").exists()
    assert compare_folders(str(tmp_path / "eager"), str(out)) == []
