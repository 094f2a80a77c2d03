"""A real Flower deployment on one machine: a SuperLink and N SuperNodes as child processes on 127.0.0.1.

This is Flower's Deployment Runtime, not its simulation: every node is its own ``flower-supernode``
process that talks to the ``flower-superlink`` over HTTP(S), exactly as on several machines (replace
127.0.0.1 by the server's address). Used by ``tests/test_flower_deployment.py`` and ``docs/flower.md``'s
multi-machine section::

    with LocalDeployment(num_nodes=2, workdir="runs/deploy", tls=True) as fed:
        fed.run("flower_app", {"num-clients": 2, "clients-per-round": 2, "num-server-rounds": 2,
                               "out-dir": "/abs/path/runs/deploy/out"})

``tls=True`` makes a throw-away CA and a server certificate for 127.0.0.1 with ``openssl``
(:func:`make_certificates`); the SuperLink gets ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``, the
SuperNodes and the ``flwr`` CLI ``--root-certificates`` / ``root-certificates``. The ``flwr`` CLI finds
the SuperLink through a connection written to ``<workdir>/flwr_home/config.toml`` (``FLWR_HOME``), so
the user's own Flower configuration is left alone. :meth:`LocalDeployment.stop` ends every process it
started, with their children (ServerApp and ClientApp processes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["LocalDeployment", "make_certificates", "free_port", "RAY_ENV"]

log = logging.getLogger(__name__)

# Ray starts its workers at nice 15, behind every other process on the machine; on Flower's Simulation Runtime the
# workers are the ClientApps, i.e. all the work. Measured on 2 cores with two busy processes beside it:
# benchmarks/flower_parity.py's smoke run failed after 4 min (no node answered within 120 s) at nice 15, and took
# 107 s at nice 0 (59 s alone). Set, unless the user set it, where Ray starts: LocalDeployment's processes (`flwr run`
# in simulation) and fedlib.flower.ray_simulation.start_ray.
RAY_ENV = {"RAY_worker_niceness": "0"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(folder: str | Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A self-signed CA and a server key/certificate for ``host`` (IP SAN), made with ``openssl``.

    Returns ``{"ca": ca.crt, "cert": server.pem, "key": server.key}``. For tests and loopback trials only:
    a real deployment uses certificates from its own CA.
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    ext = d / "san.ext"
    ext.write_text(f"subjectAltName=IP:{host}\nbasicConstraints=CA:FALSE\n")

    def ssl(*args: str) -> None:
        proc = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()[-500:]}")

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fedlib-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", "server.key", "-out", "server.csr")
    ssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    )
    return {"ca": d / "ca.crt", "cert": d / "server.pem", "key": d / "server.key"}


class LocalDeployment:
    """A SuperLink and ``num_nodes`` SuperNodes (``partition-id`` 0..N-1) on 127.0.0.1 (see module docstring).

    ``simulation=True``: a SuperLink in simulation mode instead (no SuperNode processes; ``flwr run`` asks
    for ``num_nodes`` virtual SuperNodes on Flower's Simulation Runtime): ``flwr run`` in simulation, offline
    (the managed local SuperLink that ``flwr run`` starts by itself would try to install the app's
    dependencies). ``state_dirs=True``: each node also keeps its client state on disk, so :meth:`kill_node` then
    :meth:`start_node` is a crash the node recovers from. ``heartbeat``: the SuperNodes' heartbeat interval in
    seconds (Flower's default 30; at least 10), so that the SuperLink notices a dead node after two intervals
    instead of a minute (:mod:`fedlib.flower.supernode`).
    """

    def __init__(
        self,
        num_nodes: int,
        workdir: str | Path,
        tls: bool = False,
        simulation: bool = False,
        startup_timeout: float = 60.0,
        state_dirs: bool = False,
        heartbeat: float | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self.num_nodes, self.tls, self.simulation, self.startup_timeout = num_nodes, tls, simulation, startup_timeout
        self.workdir = Path(workdir).resolve()
        self.port = 0
        self.state_dirs, self.heartbeat = state_dirs, heartbeat
        self.procs: list[subprocess.Popen] = []
        self.nodes: dict[int, subprocess.Popen] = {}  # partition -> its SuperNode process
        self.stopped: list[int] = []
        self.certs: dict[str, Path] = {}
        self.bin = Path(sys.executable).parent

    # ---- processes ------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        logf = open(self.workdir / f"{name}.log", "a")  # a restarted node appends
        cmd = [args[0] if os.path.isabs(args[0]) else str(self.bin / args[0]), *args[1:]]
        log.info("starting %s: %s", name, shlex.join(cmd))
        proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env, start_new_session=True
        )  # own process group: stop() also ends its children
        logf.close()
        self.procs.append(proc)
        return proc

    @property
    def env(self) -> dict:
        """This environment's ``bin`` first on PATH (Flower starts ``flower-superexec``, ``flwr-serverapp`` ...
        by name), a private ``FLWR_HOME``, and Ray's workers (the virtual nodes of ``simulation=True``) at nice 0
        unless set (:data:`RAY_ENV`)."""
        return {
            **RAY_ENV,
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.workdir / "flwr_home"),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }

    def _security(self, server: bool) -> list[str]:
        if not self.tls:
            return ["--insecure"]
        if server:
            return [
                "--ssl-ca-certfile",
                str(self.certs["ca"]),
                "--ssl-certfile",
                str(self.certs["cert"]),
                "--ssl-keyfile",
                str(self.certs["key"]),
            ]
        return ["--root-certificates", str(self.certs["ca"])]

    def _wait_listening(self, proc: subprocess.Popen, name: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see {self.workdir / (name + '.log')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not listen on 127.0.0.1:{self.port} within {self.startup_timeout:.0f} s")

    def start(self) -> "LocalDeployment":
        """Start the SuperLink, wait until it listens, start the SuperNodes and write the CLI connection."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.certs = make_certificates(self.workdir / "certs")
        self.port = free_port()
        link = self._spawn(
            "superlink",
            [
                "flower-superlink",
                *self._security(True),
                "--isolation",
                "subprocess",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
                *(["--simulation"] if self.simulation else []),
            ],
        )
        self._wait_listening(link, "superlink")
        for k in range(0 if self.simulation else self.num_nodes):
            self.start_node(k)
        home = self.workdir / "flwr_home"
        home.mkdir(exist_ok=True)
        conn = f'root-certificates = "{self.certs["ca"]}"' if self.tls else "insecure = true"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{self.port}"\n{conn}\n'
        )
        return self

    def start_node(self, k: int) -> subprocess.Popen:
        """Start (or restart) the SuperNode of partition ``k``; with ``state_dirs`` its client state is also kept
        in ``<workdir>/state_<k>`` (node config ``state-dir``), which a restarted node reads back."""
        config = f"partition-id={k} num-partitions={self.num_nodes}"
        if self.state_dirs:
            config += f" state-dir='{self.workdir / f'state_{k}'}'"
        launcher = ["flower-supernode"]
        if self.heartbeat is not None:
            launcher = [sys.executable, "-m", "fedlib.flower.supernode", "--heartbeat", str(self.heartbeat)]
        self.nodes[k] = self._spawn(
            f"supernode_{k}",
            [
                *launcher,
                *self._security(False),
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(free_port()),
                "--node-config",
                config,
            ],
        )
        return self.nodes[k]

    def kill_node(self, k: int) -> list[int]:
        """SIGKILL the SuperNode of partition ``k`` and its ClientApp processes at once, as a crash would; returns
        their pids."""
        import psutil

        proc = self.nodes.pop(k)
        victims = []
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(proc.pid)
            victims = [parent, *parent.children(recursive=True)]
        for p in victims:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(victims, timeout=10)
        proc.wait()
        return [p.pid for p in victims]

    def start_run(self, app_dir: str | Path, run_config: dict | None = None) -> subprocess.Popen:
        """``flwr run <app_dir> loopback --stream`` with ``run_config`` overrides, in the background (output to
        ``<workdir>/flwr_run.log``); :meth:`run` waits for it."""

        def toml(v):
            return f"'{v}'" if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)

        cmd = [str(self.bin / "flwr"), "run", str(Path(app_dir).resolve()), "loopback", "--stream"]
        if run_config:
            cmd += ["--run-config", " ".join(f"{k}={toml(v)}" for k, v in run_config.items())]
        if self.simulation:
            cmd += ["--federation-config", f"num-supernodes={self.num_nodes} client-resources-num-cpus=1"]
        with open(self.workdir / "flwr_run.log", "w") as logf:
            return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, text=True, env=self.env)

    def run(self, app_dir: str | Path, run_config: dict | None = None, timeout: float = 600.0) -> str:
        """``flwr run <app_dir> loopback --stream`` with ``run_config`` overrides; returns the CLI's output.

        Raises ``RuntimeError`` (with the output's tail) if the CLI fails or the run does not finish in time.
        """
        return self.wait_run(self.start_run(app_dir, run_config), timeout)

    def wait_run(self, proc: subprocess.Popen, timeout: float = 600.0) -> str:
        """Wait for a :meth:`start_run` run; its output, or ``RuntimeError`` with the output's tail."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            proc.kill()
            raise RuntimeError(f"flwr run did not finish within {timeout:.0f} s; logs in {self.workdir}") from err
        out = (self.workdir / "flwr_run.log").read_text()
        if proc.returncode:
            raise RuntimeError(f"flwr run failed ({proc.returncode}):\n{out[-3000:]}")
        return out

    def stop(self, grace: float = 10.0) -> list[int]:
        """End every process this deployment started and all their descendants (Flower detaches some, e.g.
        ``flower-superexec``, into sessions of their own): SIGTERM, then SIGKILL. Returns their pids."""
        import psutil

        procs = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(proc.pid)
                procs += [parent, *parent.children(recursive=True)]
        for p in reversed(procs):
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=grace)
        for proc in self.procs:
            proc.wait()
        self.procs.clear()
        self.nodes.clear()
        self.stopped = [p.pid for p in procs]
        return self.stopped

    def __enter__(self) -> "LocalDeployment":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
