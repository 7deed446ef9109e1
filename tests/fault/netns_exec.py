"""``python -m netns_exec NAMESPACE MODULE ARGS...``: ``python -m MODULE ARGS`` inside a network
namespace (``ip netns exec``). It replaces this very process (exec), so the PID a
:class:`~services.devstack.DevStack` signals stays the service's. ``netns.Network.spec`` builds
the :class:`~services.devstack.ProcessSpec` that starts a service this way."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m netns_exec NAMESPACE MODULE [ARGS...]")
    namespace, module, *args = argv
    # this directory was on PYTHONPATH only to find this module: the service does not get it
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != HERE]
    if path:
        os.environ["PYTHONPATH"] = os.pathsep.join(path)
    else:
        os.environ.pop("PYTHONPATH", None)
    ip = shutil.which("ip") or "/usr/sbin/ip"
    os.execv(ip, [ip, "netns", "exec", namespace, sys.executable, "-m", module, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
