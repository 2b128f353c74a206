"""Install and run SEKMET, an independent FHIR R4 server, on 127.0.0.1 for tests and the demo.

SEKMET (PyPI ``sekmet-fhir``, Apache-2.0) lives in its own venv so that its pins never fight the
project's. :func:`ensure_installed` creates that venv on first use; :class:`Sekmet` writes a
settings file into a run folder and starts ``sekmet serve`` as a child process in its own process
group::

    with Sekmet() as server:
        base = server.base_url          # http://127.0.0.1:<port>/fhir
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

import httpx
import yaml

SEKMET_VERSION = "0.1.1"
SEKMET_REQUIREMENT = f"sekmet-fhir=={SEKMET_VERSION}"
CONSTRAINTS_FILE = Path(__file__).with_name("sekmet-constraints.txt")
VENV_ENV_VAR = "FHIR_BRIDGE_SEKMET_VENV"
HOST = "127.0.0.1"

# SEKMET reads these from the environment and lets them override the settings file.
_SEKMET_ENV_OVERRIDES = (
    "SEKMET_CONFIG",
    "SEKMET_BASE_URL",
    "SEKMET_DB",
    "SEKMET_PUBLIC_URL",
    "SEKMET_PORT",
)
_INSTALL_TIMEOUT = 900.0
_STOP_GRACE = 10.0
_LOG_TAIL_LINES = 40


def _bin_dir(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


def _project_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


def default_venv() -> Path:
    """Where SEKMET's venv lives.

    ``$FHIR_BRIDGE_SEKMET_VENV`` if set; else ``<project root>/.fhirpeer/sekmet-venv``, where the
    project root is the nearest parent of the working directory holding a ``pyproject.toml``; else
    ``~/.cache/fhir-bridge/sekmet-venv``.
    """
    env = os.environ.get(VENV_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    root = _project_root(Path.cwd().resolve())
    if root is not None:
        return root / ".fhirpeer" / "sekmet-venv"
    return Path.home() / ".cache" / "fhir-bridge" / "sekmet-venv"


def _is_installed(venv: Path) -> bool:
    if not (_bin_dir(venv) / "sekmet").is_file():
        return False
    pattern = f"lib/python*/site-packages/sekmet_fhir-{SEKMET_VERSION}.dist-info"
    return any(venv.glob(pattern)) or any(
        venv.glob(f"Lib/site-packages/sekmet_fhir-{SEKMET_VERSION}.dist-info")
    )


@contextlib.contextmanager
def _install_lock(venv: Path) -> Iterator[None]:
    """Serialise installs into the same venv across processes (tests and `make demo` at once)."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f".{venv.name}.lock"
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_step(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            cmd,
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def ensure_installed(venv: Path) -> Path:
    """Install ``sekmet-fhir`` into ``venv`` unless it is there already; return the ``sekmet`` path.

    Creates the venv with ``sys.executable -m venv`` and pip-installs the pinned version with the
    packaged constraints file (about 15 s and 175 MB). When the right version is present this only
    looks at a few paths. Raises :class:`RuntimeError` with pip's output if the install fails.
    """
    venv = Path(venv)
    exe = _bin_dir(venv) / "sekmet"
    if _is_installed(venv):
        return exe
    with _install_lock(venv):
        if _is_installed(venv):  # another process finished it while we waited
            return exe
        python = _bin_dir(venv) / "python"
        if not python.exists():
            _run_step([sys.executable, "-m", "venv", str(venv)], f"creating the venv {venv}")
        _run_step(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-c",
                str(CONSTRAINTS_FILE),
                SEKMET_REQUIREMENT,
            ],
            f"pip install {SEKMET_REQUIREMENT} into {venv}",
        )
        if not _is_installed(venv):
            raise RuntimeError(f"{SEKMET_REQUIREMENT} installed into {venv} but {exe} is missing")
    return exe


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server.log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server.log is empty)"


class Sekmet:
    """A SEKMET server on 127.0.0.1 in its own venv, for tests and the demo.

    :param venv: SEKMET's venv (default :func:`default_venv`); :meth:`start` installs it if
        missing.
    :param run_dir: folder for ``settings.yaml``, ``server.log``, keys and (unless ``in_memory``)
        the database. Default: a fresh temporary folder that :meth:`stop` removes again. A
        folder you pass is kept, and with ``in_memory=False`` its database survives a restart.
    :param port: TCP port; default: a free one (retried if another process grabs it first).
    :param auth: ``"none"``, or ``"bearer"`` to require ``Authorization: Bearer <token>``.
    :param extra_settings: merged on top of the generated settings (nested mappings merge), e.g.
        ``{"simulator": {"enabled": True, "auto": ["Appointment"], "delay_seconds": 1}}``.
    :param in_memory: keep the database in memory (nothing on disk, gone on stop).
    """

    def __init__(
        self,
        *,
        venv: Path | None = None,
        run_dir: Path | None = None,
        port: int | None = None,
        auth: Literal["none", "bearer"] = "none",
        token: str = "test-token",  # noqa: S107 - a loopback test server's token
        extra_settings: dict[str, Any] | None = None,
        in_memory: bool = True,
    ) -> None:
        self.venv = Path(venv) if venv is not None else default_venv()
        self.auth = auth
        self.token = token
        self.extra_settings = dict(extra_settings or {})
        self.in_memory = in_memory
        self._requested_port = port
        self._requested_run_dir = Path(run_dir) if run_dir is not None else None
        self._own_run_dir = False
        self.run_dir: Path | None = self._requested_run_dir
        self.port: int | None = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._base_url: str | None = None

    # ---------------------------------------------------------------- properties

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/fhir``; valid after :meth:`start`."""
        if self._base_url is None:
            raise RuntimeError("SEKMET is not running: call start() first")
        return self._base_url

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.run_dir / "server.log" if self.run_dir is not None else None

    @property
    def headers(self) -> dict[str, str]:
        """Headers a client needs for this server (the bearer token, if any)."""
        return {"Authorization": f"Bearer {self.token}"} if self.auth == "bearer" else {}

    # ---------------------------------------------------------------- settings

    def settings(self, port: int, run_dir: Path) -> dict[str, Any]:
        """The settings SEKMET is started with (as in start-sekmet.sh, plus ``extra_settings``)."""
        data: dict[str, Any] = {
            "base_url": f"http://{HOST}:{port}/fhir",
            "host": HOST,
            "port": port,
            "data_dir": str(run_dir / "data"),
            "own_private_key_path": str(run_dir / "keys" / "sekmet_private.pem"),
            "log_inbound": False,
            "simulator": {"enabled": False},
            "validation": {"inbound": "strict"},
        }
        if self.in_memory:
            data["db_path"] = ":memory:"
        if self.auth == "bearer":
            data["server_auth"] = {"types": ["bearer"], "tokens": [self.token]}
        else:
            data["server_auth"] = {"types": ["none"]}
        merged = _deep_merge(data, self.extra_settings)
        if merged.get("host") != HOST:
            raise ValueError(f"SEKMET may only listen on {HOST}, not {merged.get('host')!r}")
        return merged

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 60) -> str:
        """Install if needed, start the server, wait until ``GET /metadata`` answers.

        Returns the base URL. Raises :class:`RuntimeError` (with the tail of ``server.log``) if the
        server exits or does not answer within ``timeout`` seconds.
        """
        if self.running:
            return self.base_url
        if self._requested_port is not None and not _port_free(self._requested_port):
            # else GET /metadata could reach whatever already listens there
            raise RuntimeError(f"port {self._requested_port} on {HOST} is already in use")
        exe = ensure_installed(self.venv)
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="sekmet-"))
            self._own_run_dir = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._requested_port is not None else 3
        deadline = time.monotonic() + timeout
        for attempt in range(attempts):
            port = self._requested_port if self._requested_port is not None else free_port()
            try:
                return self._start_once(exe, port, deadline)
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError(
                        f"SEKMET could not bind a port on {HOST}; see {self.log_path}:\n"
                        f"{_log_tail(self._require_log_path())}"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _require_log_path(self) -> Path:
        path = self.log_path
        if path is None:  # pragma: no cover - set by start()
            raise RuntimeError("no run folder")
        return path

    def _start_once(self, exe: Path, port: int, deadline: float) -> str:
        run_dir = self.run_dir
        if run_dir is None:  # pragma: no cover - set by start()
            raise RuntimeError("no run folder")
        settings_path = run_dir / "settings.yaml"
        settings_path.write_text(yaml.safe_dump(self.settings(port, run_dir), sort_keys=False))
        log_path = self._require_log_path()
        env = {k: v for k, v in os.environ.items() if k not in _SEKMET_ENV_OVERRIDES}
        self._log = log_path.open("wb")
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [str(exe), "serve", "-c", str(settings_path)],
            cwd=run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.port = port
        url = f"http://{HOST}:{port}/fhir"
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._cleanup_process()
                    tail = _log_tail(log_path)
                    if "address already in use" in tail.lower() and self._requested_port is None:
                        raise _PortTaken
                    raise RuntimeError(
                        f"SEKMET exited with code {code} before answering; {log_path}:\n{tail}"
                    )
                try:
                    if client.get(f"{url}/metadata").status_code == 200:
                        self._base_url = url
                        atexit.register(self.stop)  # no orphaned server if the caller forgets
                        return url
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self._terminate()
                    raise RuntimeError(
                        f"SEKMET did not answer {url}/metadata in time; {log_path}:\n"
                        f"{_log_tail(log_path)}"
                    )
                time.sleep(0.2)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)  # own session: the group id is the child's pid
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def _terminate(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait(timeout=_STOP_GRACE)
        self._cleanup_process()

    def _cleanup_process(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=_STOP_GRACE)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Terminate the server (SIGTERM, SIGKILL after a grace period). Safe to call repeatedly.

        Also runs at interpreter exit for a server that is still running (not on SIGKILL, nor on
        SIGTERM unless the program turns SIGTERM into a normal exit).
        """
        atexit.unregister(self.stop)
        self._terminate()
        self._base_url = None
        if self._own_run_dir and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
            self._own_run_dir = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self._base_url or "stopped"
        return f"Sekmet({state}, venv={str(self.venv)!r})"


class _PortTaken(Exception):
    """The auto-chosen port was taken before SEKMET could bind it."""
