"""Processes and shared memory of one tritonserver, read from /proc (Linux).

The python backend runs each model instance in a `triton_python_backend_stub` child of
tritonserver and talks to it through a /dev/shm region whose name is on the stub's command
line. A tritonserver or stub killed by a signal leaves its regions behind (even a clean
shutdown can leave some), so whoever starts the server records its regions while it runs
and removes them once its processes are gone.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set

SHM_DIR = "/dev/shm"
SHM_PREFIX = "triton_python_backend_shm_region_"
STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str      # the model.py path the stub runs
    instance: str   # e.g. feature_extractor_0_1
    region: str     # its /dev/shm region name


def _cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _ppid_and_state(pid: int):
    """(parent pid, state letter) or (None, None) when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[1]), rest[0]
    except (OSError, IndexError, ValueError):
        return None, None


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    _, state = _ppid_and_state(pid)
    return state is not None and state not in ("Z", "X")


def children(pid: int) -> List[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and _ppid_and_state(int(d))[0] == pid:
            out.append(int(d))
    return out


def stubs(server_pid: int) -> List[Stub]:
    """The python backend stubs tritonserver `server_pid` runs (alive ones)."""
    out = []
    for pid in children(server_pid):
        args = _cmdline(pid)
        if args and os.path.basename(args[0]) == STUB_NAME and len(args) > 2 and alive(pid):
            # stub model.py region shm_size shm_growth parent_pid backend_dir ipc_size instance ...
            out.append(Stub(pid, args[1], args[8] if len(args) > 8 else "", args[2]))
    return out


def mapped_regions(pid: int) -> Set[str]:
    """Names of the python-backend /dev/shm regions process `pid` has mapped."""
    names = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                base = os.path.basename(path.replace(" (deleted)", ""))
                if path.startswith(SHM_DIR + "/") and base.startswith(SHM_PREFIX):
                    names.add(base)
    except OSError:
        pass
    return names


def server_regions(server_pid: int) -> Set[str]:
    """Every python-backend region of tritonserver `server_pid` and its stubs."""
    names = mapped_regions(server_pid)
    for s in stubs(server_pid):
        names.add(s.region)
        names |= mapped_regions(s.pid)
    return names


def remove_regions(names: Iterable[str]) -> List[str]:
    """Unlink these regions (names under /dev/shm); -> the ones removed."""
    removed = []
    for n in sorted(set(names)):
        if not n.startswith(SHM_PREFIX) or "/" in n:
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, n))
            removed.append(n)
        except FileNotFoundError:
            pass
    return removed


def stub_summary(stubs_: Iterable[Stub]) -> Dict[int, str]:
    return {s.pid: s.instance or s.model for s in stubs_}


# -- who listens on a TCP port (the guard workers share theirs with SO_REUSEPORT) -------------
LISTEN = "0A"
_WILDCARDS = ("0.0.0.0", "::")


def _proc_address(hexaddr: str) -> str:
    """/proc/net/tcp{,6} address (hex, 32-bit words in host order) -> text."""
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    text = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    # gRPC binds an IPv4 address as an IPv4-mapped IPv6 one ([::ffff:127.0.0.1])
    return text[7:] if text.startswith("::ffff:") and "." in text else text


def _addresses(host: str) -> Set[str]:
    host = host.strip("[]") or "0.0.0.0"
    try:
        return {ai[4][0] for ai in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return {host}


def _overlap(a: str, b: str) -> bool:
    """Whether connections to bound address a can reach a socket bound on b (or back)."""
    if a == b:
        return True
    for x, y in ((a, b), (b, a)):
        if x in _WILDCARDS and (x == "::" or ":" not in y):  # [::] is dual-stack on Linux
            return True
    return False


def listening_sockets(port: int, host: str = "0.0.0.0") -> List[int]:
    """Inodes of the TCP sockets listening on `port` at an address that overlaps `host`'s
    (this network namespace, every user)."""
    ours = _addresses(host)
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != LISTEN:
                continue
            addr, _, hexport = cols[1].partition(":")
            if int(hexport, 16) != port:
                continue
            text = _proc_address(addr)
            if any(_overlap(text, a) for a in ours):
                out.append(int(cols[9]))
    return out


def socket_inodes(pid: int) -> Set[int]:
    """Inodes of the sockets process `pid` holds open (empty when it is gone or not ours)."""
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def socket_owner(inode: int) -> Optional[int]:
    """A process holding socket `inode`, among those this user may look into."""
    for d in os.listdir("/proc"):
        if d.isdigit() and inode in socket_inodes(int(d)):
            return int(d)
    return None


def command_line(pid: int) -> str:
    return " ".join(_cmdline(pid))
