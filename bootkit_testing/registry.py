"""A private container registry for the tests: docker-registry on 127.0.0.1, metered.

Debian's docker-registry (the distribution project's registry) serves from a directory
of the test's, on a free loopback port, over plain HTTP and with no authentication.
Clients reach it through a small TCP relay that counts the bytes going back to them:
that is how tests check that `upgrade --check` costs a manifest, not an image, and
that an update downloads only the layers that changed. The relay counts what it
forwards before forwarding it, so once a client has finished, its bytes are counted.

skopeo speaks plain HTTP only to a registry that registries.conf marks insecure.
skopeo 1.9.3 ignores CONTAINERS_REGISTRIES_CONF (newer ones read it) but reads
$HOME/.config/containers/registries.conf in place of the system's file, so `env` sets
both, HOME to a directory of the registry's own. That HOME also keeps the machine's
registry credentials and blob cache out of the tests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bootkit.base import process
from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError

from bootkit_testing.imagetrust import ImageTrust

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_CHUNK = 64 << 10
_LOG_LINES = 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A port chosen free can be taken before the registry binds it; then another is tried.
_PORT_ATTEMPTS = 3


def registry_program() -> str:
    return shutil.which("docker-registry") or "/usr/bin/docker-registry"


class Registry:
    """docker-registry serving `workdir`/storage on 127.0.0.1, for as long as it runs.

    Use it as a context manager (or call start() and stop()). `host` is what
    references name ("127.0.0.1:PORT", the metering relay), `env` what a skopeo or
    bootkit subprocess needs on top of its environment to talk to it.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.config = workdir / "config.yml"
        self.log = workdir / "registry.log"
        self.home = workdir / "home"
        self.registries_conf = self.home / ".config" / "containers" / "registries.conf"
        self._process: subprocess.Popen[bytes] | None = None
        self._backend_port = 0
        self._relay: _Relay | None = None

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("the test registry is already running")
        self.storage.mkdir(parents=True, exist_ok=True)
        try:
            self._serve()
            self._relay = _Relay(("127.0.0.1", self._backend_port))
            self._write_registries_conf(self._relay.port)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the relay and the registry; safe to call more than once."""
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()
        proc, self._process = self._process, None
        if proc is not None:
            _end(proc)

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what clients use --------------------------------------------------------------

    @property
    def host(self) -> str:
        """"127.0.0.1:PORT" of the metered relay: the registry as clients see it."""
        return f"127.0.0.1:{self._running_relay().port}"

    @property
    def backend_host(self) -> str:
        """The registry itself, unmetered (for tests of the relay)."""
        self._running_relay()
        return f"127.0.0.1:{self._backend_port}"

    @property
    def env(self) -> dict[str, str]:
        """Variables a skopeo (or bootkit) subprocess needs to reach the registry."""
        self._running_relay()
        return {"HOME": str(self.home), "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf)}

    def reference(self, name: str, tag: str = "latest") -> str:
        """The docker:// reference of `name`:`tag` in this registry."""
        return f"docker://{self.host}/{name}:{tag}"

    def served_bytes(self) -> int:
        """Bytes sent to clients (headers included) since the start or reset_count()."""
        return self._running_relay().served()

    def reset_count(self) -> None:
        self._running_relay().reset()

    def push(
        self, layout: Path, tag: str, name: str, *,
        sign_by: str | None = None, trust: ImageTrust | None = None,
    ) -> str:
        """Copy oci:`layout`:`tag` to `name`:`tag` here; return the manifest digest.

        With `trust` the image is signed, by `sign_by` (a key fingerprint in the trust's
        GNUPGHOME) or else by the trust's own key, and the signature lands in the
        trust's lookaside directory. The push counts in served_bytes like any client.
        """
        if sign_by is not None and trust is None:
            raise ValueError("signing needs the trust holding the key (its GNUPGHOME)")
        digest_file = self.workdir / f"push-{secrets.token_hex(8)}.digest"
        # Pushing is not what the tests check: the policy applies to pulls.
        argv: list[str | os.PathLike[str]] = [
            "skopeo", "--insecure-policy", "copy", "--preserve-digests",
            "--dest-tls-verify=false", "--digestfile", digest_file,
        ]
        env = self.env
        if trust is not None:
            argv += ["--sign-by", sign_by or trust.fingerprint,
                     "--registries.d", trust.registries_d]
            env["GNUPGHOME"] = str(trust.gnupghome)
        argv += [f"oci:{layout}:{tag}", f"docker://{self.host}/{name}:{tag}"]
        try:
            process.run(argv, f"pushing {name}:{tag} to the test registry", env=env)
            digest = digest_file.read_text().strip()
        finally:
            digest_file.unlink(missing_ok=True)
        if not _DIGEST.fullmatch(digest):
            raise BootkitError(f"skopeo reported the manifest digest {digest!r} of {name}:{tag}")
        return digest

    # -- inside ------------------------------------------------------------------------

    def _running_relay(self) -> _Relay:
        if self._relay is None:
            raise RuntimeError("the test registry is not running: start() it first")
        return self._relay

    def _serve(self) -> None:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self._backend_port = _free_port()
            self._write_config(self._backend_port)
            with self.log.open("ab") as log:
                self._process = subprocess.Popen(
                    [*_dies_with_parent(), registry_program(), "serve", str(self.config)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )
            try:
                self._wait_ready(self._process)
                return
            except _PortTaken:
                _end(self._process)
                self._process = None
                if attempt == _PORT_ATTEMPTS:
                    raise BootkitError(
                        "the test registry found no free port on 127.0.0.1",
                        hint=f"see its log {self.log}",
                    ) from None

    def _write_config(self, port: int) -> None:
        # JSON strings are YAML strings: paths need no further quoting.
        atomic_write(self.config, "\n".join([
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {json.dumps(str(self.storage))}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{port}",
            # Without a secret the registry makes one, and warns about it at every start.
            f"  secret: {secrets.token_hex(16)}",
            "",
        ]))

    def _write_registries_conf(self, port: int) -> None:
        self.registries_conf.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.registries_conf, "\n".join([
            "[[registry]]",
            f'location = "127.0.0.1:{port}"',
            "insecure = true",
            "",
        ]))

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                log = self._log_tail()
                if "address already in use" in log:
                    raise _PortTaken
                raise BootkitError(
                    f"the test registry exited with status {proc.returncode} at its start:\n{log}",
                    hint="check that docker-registry works: docker-registry --version",
                )
            if _answers(self._backend_port):
                return
            if time.monotonic() > deadline:
                raise BootkitError(
                    f"the test registry did not answer on 127.0.0.1:{self._backend_port} "
                    f"within {READY_TIMEOUT:.0f} s:\n{self._log_tail()}",
                    hint="a loaded machine may need more time; see the log above",
                )
            time.sleep(0.01)

    def _log_tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return "\n".join(text.splitlines()[-_LOG_LINES:]) or "(its log is empty)"


class _PortTaken(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    # http.client, not urllib: urllib would send this through an http_proxy of the
    # environment.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _dies_with_parent() -> list[str]:
    # Teardown stops the registry; this covers a test run killed before teardown.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@dataclass(eq=False)
class _Link:
    """One client connection and its connection to the registry."""

    client: socket.socket
    upstream: socket.socket
    pumps_left: int = 2
    threads: list[threading.Thread] = field(default_factory=list)


class _Relay:
    """Forwards 127.0.0.1:`port` to the registry and counts the bytes going back."""

    def __init__(self, backend: tuple[str, int]) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._served = 0
        self._links: set[_Link] = set()
        self._closing = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="registry relay", daemon=True)
        self._acceptor.start()

    def served(self) -> int:
        with self._lock:
            return self._served

    def reset(self) -> None:
        with self._lock:
            self._served = 0

    def close(self) -> None:
        with self._lock:
            self._closing = True
            links = list(self._links)
        # shutdown, not just close: it is what wakes a thread blocked in accept or recv.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(STOP_TIMEOUT)
        for link in links:
            for sock in (link.client, link.upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            for thread in link.threads:
                thread.join(STOP_TIMEOUT)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # close() shut the listener down
            try:
                upstream = socket.create_connection(self._backend, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the client sees the registry as down, as it is
                continue
            link = _Link(client, upstream)
            with self._lock:
                if self._closing:
                    client.close()
                    upstream.close()
                    return
                self._links.add(link)
                for source, sink, counted in ((client, upstream, False), (upstream, client, True)):
                    thread = threading.Thread(
                        target=self._pump, args=(link, source, sink, counted),
                        name="registry relay pump", daemon=True,
                    )
                    link.threads.append(thread)
                    thread.start()

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(_CHUNK):
                if counted:
                    with self._lock:
                        self._served += len(data)
                sink.sendall(data)
            # A clean end: pass it on, and let the other direction finish its answer.
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        except OSError:
            # A reset on either side ends the whole link: wake the other pump too.
            for sock in (link.client, link.upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            link.pumps_left -= 1
            if link.pumps_left:
                return
            self._links.discard(link)
        link.client.close()
        link.upstream.close()
