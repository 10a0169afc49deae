"""Eager conversions in bulk, for tests/test_convert_flags.py and tests/test_corpus.py:
runs a library's own convert command (`mlx_lm.convert` / `mlx_vlm.convert`, its
`main()` with `sys.argv` set to the library's spelling) for many jobs in ONE
process (importing the library once instead of once per conversion), and
records each outcome as JSON.

    python tests/eager_batch.py LIBRARY JOBS.json RESULTS.json

JOBS.json is a list of {"id", "argv", "cwd"}; jobs run in order (a later job may
read an earlier job's output). Each result is {"id", "status": "ok" | "exit" |
"error", "code", "message", "stderr"}: "exit" is a SystemExit (argparse),
"error" an exception raised by the library (message = str(exception)).
"""

import contextlib
import importlib
import io
import json
import os
import sys


def run_jobs(library: str, jobs: list) -> list:
    module = importlib.import_module(f"{library}.convert")
    results = []
    start_dir = os.getcwd()
    for job in jobs:
        out, err = io.StringIO(), io.StringIO()
        result = {"id": job["id"], "status": "ok", "code": 0, "message": ""}
        sys.argv = [f"{library}.convert", *job["argv"]]
        os.chdir(job["cwd"])
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                module.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if code:
                lines = [line for line in err.getvalue().splitlines() if line.strip()]
                result.update(status="exit", code=code, message=lines[-1] if lines else "")
        except Exception as e:  # noqa: BLE001  recorded: the library refuses the combination
            result.update(status="error", code=1, message=str(e), type=type(e).__name__)
        finally:
            os.chdir(start_dir)
        result["stderr"] = err.getvalue()[-4000:]
        results.append(result)
    return results


if __name__ == "__main__":
    library, jobs_path, results_path = sys.argv[1:4]
    with open(jobs_path) as f:
        jobs = json.load(f)
    results = run_jobs(library, jobs)
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
