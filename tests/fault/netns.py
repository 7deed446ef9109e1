"""Hosts of ``infra/netns.sh`` for the fault tests: one network namespace per host on a bridge,
each with its own address, a network of its own per run (a random prefix and /24), and a host
cut off the network (its veth down: packets vanish, nothing is reset) and restored."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from infra_scripts import run_script

from services.common.logging import get_logger
from services.devstack import ProcessSpec

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "netns.sh"
HERE = str(Path(__file__).resolve().parent)
_log = get_logger(__name__)


def problems() -> list[str]:
    """Why namespaces cannot be made here (empty when they can): root and iproute2."""
    found = []
    if os.geteuid() != 0:
        found.append("not root (network namespaces need root)")
    if shutil.which("ip") is None and not Path("/usr/sbin/ip").exists():
        found.append("no iproute2 `ip`")
    return found


class Network:
    """The hosts ``hosts`` (names of 1-7 of [a-z0-9]) on a bridge, until :meth:`destroy`."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.hosts = list(hosts)
        self.prefix = f"ixn{secrets.token_hex(2)}"
        self.addresses: dict[str, str] = {}
        self.env = {
            **os.environ,
            "INDEXIFY_NETNS_PREFIX": self.prefix,
            "INDEXIFY_NETNS_SUBNET": f"10.{random.randrange(200, 250)}.{random.randrange(256)}",
            "INDEXIFY_NETNS_OWNER": str(os.getpid()),
        }

    def run(self, *args: str) -> str:
        return run_script(SCRIPT, args, self.env, timeout=120)

    def create(self) -> None:
        self.run("gc")  # networks of runs that were killed before their teardown
        for attempt in range(5):
            try:
                self.run("create", *self.hosts)
                break
            except RuntimeError as exc:
                if "already used" not in str(exc) or attempt == 4:
                    raise
                self.env["INDEXIFY_NETNS_SUBNET"] = (
                    f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
                )
        self.addresses = {host: self.run("addr", host) for host in self.hosts}
        _log.info("network created", prefix=self.prefix, hosts=self.addresses)

    @property
    def gateway(self) -> str:
        """The bridge's address: the machine's own side of the network."""
        return f"{self.env['INDEXIFY_NETNS_SUBNET']}.1"

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def cut(self, host: str) -> float:
        """Take ``host`` off the network; returns when (``time.monotonic()``)."""
        self.run("cut", host)
        return time.monotonic()

    def restore(self, host: str) -> float:
        self.run("restore", host)
        return time.monotonic()

    def state(self, host: str) -> str:
        return self.run("state", host)

    @contextmanager
    def cut_off(self, host: str) -> Iterator[float]:
        """``host`` off the network inside the block (restored even when the block fails)."""
        at = self.cut(host)
        try:
            yield at
        finally:
            self.restore(host)

    def spec(
        self,
        name: str,
        module: str,
        host: str,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> ProcessSpec:
        """A :class:`ProcessSpec` that runs ``python -m module args`` on ``host``."""
        pythonpath = os.pathsep.join(
            p for p in (HERE, str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        return ProcessSpec(
            name,
            "netns_exec",
            [self.namespace(host), module, *args],
            {**(env or {}), "PYTHONPATH": pythonpath},
        )

    def destroy(self) -> None:
        """End what runs in the namespaces, delete them, the veths and the bridge."""
        self.run("destroy")
        _log.info("network destroyed", prefix=self.prefix)

    def __enter__(self) -> Network:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
