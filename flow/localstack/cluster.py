"""Several ``flow serve`` instances behind HAProxy on this machine: ``scripts/cluster-up N``.

HAProxy (Debian's package) listens on one port and health-checks every instance's
``GET /health/ready``: joins go only to instances that can take a call, and one that
drains (SIGTERM) or is full leaves the rotation within a check. A join an instance
still answers 503 (draining, full) is retried on another (``retry-on 503``,
``option redispatch``: a refused join leaves nothing behind, so a retry is safe).
Requests of a client that keeps HAProxy's cookie (``flow_instance``) go back to the
instance that answered it: a WebRTC caller's trickled candidates reach the instance that
holds its peer.

``up`` brings up the local stack, N instances (each with its own spool directory and
log under ``<stack dir>/cluster``) and HAProxy, and prints the URL; ``down`` sends every
instance SIGTERM (each drains: its calls end first) and then stops HAProxy. The tests of
draining use :func:`haproxy_config` and :class:`HAProxy` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flow.localstack.install import StackError, ensure_haproxy
from flow.localstack.migrations import project_root
from flow.localstack.supervisor import default_state_dir, free_port, up

CHECK_MILLISECONDS = 1000
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 900.0


def haproxy_config(
    servers: dict[str, int],
    port: int,
    stats_port: int,
    *,
    check_ms: int = CHECK_MILLISECONDS,
    host: str = "127.0.0.1",
) -> str:
    """HAProxy in front of ``servers`` (name -> port on 127.0.0.1), listening on
    ``host:port``; its statistics (``/stats``, ``/stats;csv``) on ``stats_port``."""
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    timeout http-request 10s",
        # Telephony media websockets live as long as the call.
        "    timeout tunnel 2h",
        # A join refused with 503 (draining, full) goes to another instance; the body is
        # buffered so that it can be sent again.
        "    option http-buffer-request",
        "    retries 3",
        "    retry-on conn-failure empty-response 503",
        "    option redispatch 1",
        "frontend flow",
        f"    bind {host}:{port}",
        "    default_backend flow",
        "backend flow",
        "    balance leastconn",
        "    option httpchk GET /health/ready",
        "    http-check expect status 200",
        "    cookie flow_instance insert indirect nocache",
        # Two failed checks in a row take a server out (one slow answer does not), one
        # good check brings it back; the check waits at most 3 s for the answer.
        "    timeout check 3s",
        f"    default-server inter {check_ms} fastinter {check_ms} downinter {check_ms} "
        "fall 2 rise 1",
    ]
    lines += [f"    server {name} 127.0.0.1:{p} check cookie {name}" for name, p in servers.items()]
    lines += [
        "frontend stats",
        f"    bind 127.0.0.1:{stats_port}",
        "    stats enable",
        "    stats uri /stats",
        "",
    ]
    return "\n".join(lines)


class HAProxy:
    """One HAProxy process running ``config`` (written to ``directory/haproxy.cfg``)."""

    def __init__(self, config: str, directory: Path) -> None:
        self.path = Path(directory) / "haproxy.cfg"
        self.path.write_text(config)
        self.log_path = Path(directory) / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, detach: bool = False) -> HAProxy:
        binary = ensure_haproxy()
        subprocess.run([str(binary), "-c", "-q", "-f", str(self.path)], check=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "-db", "-f", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
            )
        return self

    def server_states(self, stats_port: int) -> dict[str, str]:
        """Each server's state as HAProxy sees it (``UP``, ``DOWN``, ...)."""
        url = f"http://127.0.0.1:{stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=2) as resp:
            rows = resp.read().decode().splitlines()
        header = rows[0].lstrip("# ").split(",")
        states = {}
        for row in rows[1:]:
            values = dict(zip(header, row.split(","), strict=False))
            if values.get("pxname") == "flow" and values.get("svname") not in (
                "FRONTEND",
                "BACKEND",
            ):
                states[values["svname"]] = values["status"].split(" ")[0]
        return states

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@dataclass
class ClusterState:
    url: str
    stats_url: str
    instances: dict[str, int] = field(default_factory=dict)  # name -> pid
    ports: dict[str, int] = field(default_factory=dict)  # name -> port
    haproxy_pid: int = 0


def _state_file(cluster_dir: Path) -> Path:
    return cluster_dir / "cluster.json"


def _wait_ok(url: str, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise StackError(f"{what} did not answer {url} within {START_TIMEOUT_SECONDS:.0f}s")


def cluster_up(count: int, port: int, stack_dir: Path) -> ClusterState:
    cluster_dir = stack_dir / "cluster"
    if _state_file(cluster_dir).exists():
        raise StackError(f"a cluster is already up ({cluster_dir}): scripts/cluster-down first")
    info = up(stack_dir)
    cluster_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **info.env(),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(project_root()), os.environ.get("PYTHONPATH")) if p
        ),
    }
    state = ClusterState(url="", stats_url="")
    try:
        _start(state, count, port, env, cluster_dir)
    except BaseException:
        for pid in [*state.instances.values(), state.haproxy_pid]:
            if pid:
                _signal(pid, signal.SIGKILL)
        raise
    return state


def _start(
    state: ClusterState, count: int, port: int, env: dict[str, str], cluster_dir: Path
) -> None:
    for n in range(1, count + 1):
        name, instance_port = f"flow{n}", free_port(None)
        spool = cluster_dir / f"spool-{n}"
        with open(cluster_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flow.cli", "serve", "--port", str(instance_port)],
                env={**env, "HOST": "127.0.0.1", "FLOW_SPOOL_DIR": str(spool)},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=project_root(),
                start_new_session=True,
            )
        state.instances[name], state.ports[name] = proc.pid, instance_port
    for name, instance_port in state.ports.items():
        _wait_ok(f"http://127.0.0.1:{instance_port}/health/live", name)
    stats_port = free_port(None)
    proxy = HAProxy(haproxy_config(state.ports, port, stats_port), cluster_dir).start(detach=True)
    assert proxy.proc is not None
    state.haproxy_pid = proxy.proc.pid
    state.url = f"http://127.0.0.1:{port}"
    state.stats_url = f"http://127.0.0.1:{stats_port}/stats"
    _wait_ok(state.stats_url, "HAProxy")
    _state_file(cluster_dir).write_text(json.dumps(asdict(state), indent=2))


def cluster_down(stack_dir: Path) -> None:
    """SIGTERM every instance (they drain), wait for them (bounded), stop HAProxy."""
    cluster_dir = stack_dir / "cluster"
    path = _state_file(cluster_dir)
    if not path.exists():
        print("no cluster is up", file=sys.stderr)
        return
    state = ClusterState(**json.loads(path.read_text()))
    for pid in state.instances.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while any(_alive(pid) for pid in state.instances.values()):
        if time.monotonic() > deadline:
            raise StackError("instances still draining; send SIGTERM again to end their calls")
        time.sleep(0.5)
    _signal(state.haproxy_pid, signal.SIGTERM)
    path.unlink()


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # our own child that exited: reap it
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flow.localstack.cluster")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("count", nargs="?", type=int, default=2, help="instances (up)")
    parser.add_argument("--port", type=int, default=8080, help="HAProxy's port (up)")
    parser.add_argument("--dir", type=Path, default=None, help="the stack's state directory")
    args = parser.parse_args(argv)
    stack_dir = Path(args.dir or default_state_dir()).resolve()
    try:
        if args.action == "down":
            cluster_down(stack_dir)
            return 0
        if not 1 <= args.count <= 16:
            parser.error("count must be between 1 and 16")
        state = cluster_up(args.count, args.port, stack_dir)
    except (StackError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, instance_port in state.ports.items():
        print(f"{name}: http://127.0.0.1:{instance_port} (pid {state.instances[name]})")
    print(f"HAProxy statistics: {state.stats_url}")
    print(f"FLOW_URL={state.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
