"""A real Ray cluster on this machine for the tests: one `ray start --block`
process per node, talking over 127.0.0.1, stopped by signalling exactly the
processes those starts made (never `ray stop`, which kills every Ray process of
every user on the machine).

Each node runs in its own session (``start_new_session``): Ray's raylet and
worker processes keep that session id while putting themselves in other
process groups, so stopping a node (or losing it) is "signal every process of
that session".
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

import psutil

# fast node-death detection, no usage reporting, and no memory monitor (it measures
# the whole shared machine and would kill workers for other processes' memory)
NODE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_memory_monitor_refresh_ms": "0",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "0",
}


# Ray's token authentication with a token of the tests' own, set before ray is imported
# (it reads them once): this process (the tests' driver), the nodes and every process
# the tests start join with it
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    """Nodes of ``cpus`` CPUs and ``memory`` bytes each, every node offering
    ``mlx`` = its CPUs (a CPU host, sanitrace's custom resource)."""

    def __init__(self, nodes: int = 2, cpus: int = 1, memory: int = 3 << 30):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.cpus, self.memory = cpus, memory
        self.procs: List[subprocess.Popen] = []
        self.temp_dirs: List[str] = []
        try:
            for i in range(nodes):
                self._start_node(head=i == 0)
            self._wait_alive(nodes)
        except BaseException:
            self.stop()
            raise

    def _start_node(self, head: bool) -> None:
        temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # socket paths must stay under 107 bytes
        self.temp_dirs.append(temp)
        argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats"]
        argv += ["--node-ip-address", "127.0.0.1", "--dashboard-agent-listen-port", "0"]
        argv += ["--num-cpus", str(self.cpus), "--memory", str(self.memory), "--object-store-memory", str(80 << 20)]
        argv += ["--resources", f'{{"mlx": {self.cpus}}}', "--temp-dir", temp]
        if head:
            argv += ["--head", "--port", str(self.port), "--include-dashboard", "false"]
        else:
            argv += ["--address", self.address, "--include-log-monitor", "false"]
        log = open(os.path.join(temp, "start.log"), "wb")
        self.procs.append(
            subprocess.Popen(
                argv,
                env={**os.environ, **NODE_ENV},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        log.close()

    def _wait_alive(self, nodes: int, timeout: float = 120) -> None:
        import ray

        deadline = time.time() + timeout
        while True:
            for proc, temp in zip(self.procs, self.temp_dirs):
                if proc.poll() is not None:
                    with open(os.path.join(temp, "start.log"), "rb") as f:
                        raise RuntimeError(f"ray start exited {proc.returncode}: {f.read()[-2000:].decode()}")
            try:
                if not ray.is_initialized():
                    ray.init(address=self.address, log_to_driver=False, logging_level="WARNING")
                if len(self.alive_nodes()) >= nodes:
                    return
            except ConnectionError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the Ray cluster at {self.address} did not come up in {timeout} s")
            time.sleep(0.5)

    def alive_nodes(self) -> list:
        import ray

        return [n for n in ray.nodes() if n.get("Alive")]

    def session_pids(self, node: int) -> List[int]:
        """Every live process of node ``node``'s session (zombies left out)."""
        sid = self.procs[node].pid
        pids = []
        for p in psutil.process_iter(["pid", "status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(p.info["pid"]) == sid:
                    pids.append(p.info["pid"])
            except (ProcessLookupError, PermissionError):
                continue
        return pids

    def task_processes(self, name: str, nodes: Optional[List[int]] = None) -> List[psutil.Process]:
        """Worker processes of this cluster (or of ``nodes``) running a task of
        function ``name`` (Ray's process title)."""
        found = []
        for node in range(len(self.procs)) if nodes is None else nodes:
            for pid in self.session_pids(node):
                try:
                    proc = psutil.Process(pid)
                    if any(f"ray::{name}" in part for part in proc.cmdline()):
                        found.append(proc)
                except psutil.Error:
                    continue
        return found

    def kill_node(self, node: int) -> None:
        """Lose node ``node``: SIGKILL every process of its session."""
        for pid in self.session_pids(node):
            _signal(pid, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM each `ray start --block` and wait; then SIGKILL whatever is left
        in their sessions; remove the temp dirs."""
        try:
            import ray

            ray.shutdown()
        except ImportError:
            pass
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for node in range(len(self.procs)):
            for pid in self.session_pids(node):
                _signal(pid, signal.SIGKILL)
        for temp in self.temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)


def _signal(pid: int, sig: int) -> Optional[bool]:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return None
