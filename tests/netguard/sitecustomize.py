"""Loaded by every Python process started with this folder on PYTHONPATH: refuse and record network use."""

import os
import socket

_LOG = os.environ.get("NETGUARD_LOG")
_real_connect = socket.socket.connect


def _record(what: str) -> None:
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"pid {os.getpid()}: {what}\n")


def _connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"connect {address!r}")
        raise OSError("network access blocked by the test network guard")
    return _real_connect(self, address)


def _getaddrinfo(host, *args, **kwargs):
    _record(f"getaddrinfo {host!r}")
    raise socket.gaierror("name resolution blocked by the test network guard")


socket.socket.connect = _connect
socket.socket.connect_ex = lambda self, address: _connect(self, address)
socket.getaddrinfo = _getaddrinfo
