"""The air gap, proven: `respublica up --smoke` in a network namespace that has only loopback, under
`strace -f -e trace=connect`, answers requests through the gateway and never tries to reach anything
but loopback or a unix socket.

A namespace with only `lo` makes any other destination fail (ENETUNREACH), but a failed attempt is still
a leak waiting for a network (a usage report, a hub look-up, Ray asking a public DNS server for "its"
address), so the test fails on the attempt, not on its outcome: every connect() of every process `up`
starts is read from strace's log. docs/air-gapped.md points here.

Needs root (for `unshare -n`), strace, iproute2, nsenter and the CPU engine; in CI (CI=true) their
absence is a failure, elsewhere a skip.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT_S = 480
GATEWAY_PORT = 18080  # the namespace is private: any port is free there
ENGINE_PORT = 18000
MARKER_ENV = "RESPUBLICA_TEST_AIRGAP_MARKER"
MODEL = "tiny-llama"

# strace -f prints `PID connect(FD, {sa_family=AF_..., ...}, LEN) = RESULT`, or, when another thread
# interleaves, `PID connect(FD, {...}, LEN <unfinished ...>`; the address is always on the first part.
_CONNECT = re.compile(r"^(?:\[pid\s+)?\d+\]?\s+connect\(\d+, \{sa_family=(?P<family>AF_\w+)(?P<rest>.*)$")
_INET = re.compile(r'sin_addr=inet_addr\("(?P<addr>[^"]+)"\)')
_INET6 = re.compile(r'inet_pton\(AF_INET6, "(?P<addr>[^"]+)"')
# AF_UNSPEC disconnects a datagram socket; AF_NETLINK talks to this machine's kernel.
_LOCAL_FAMILIES = {"AF_UNIX", "AF_LOCAL", "AF_UNSPEC", "AF_NETLINK"}


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def connects(trace: str) -> list[str]:
    """Every connect() line of an strace log."""
    return [line for line in trace.splitlines() if _CONNECT.match(line)]


def forbidden_connects(trace: str) -> list[str]:
    """The connect() calls of an strace log that go anywhere but loopback or a local socket."""
    bad = []
    for line in connects(trace):
        match = _CONNECT.match(line)
        assert match is not None
        family, rest = match.group("family"), match.group("rest")
        if family in _LOCAL_FAMILIES:
            continue
        found = _INET.search(rest) if family == "AF_INET" else _INET6.search(rest)
        if family in ("AF_INET", "AF_INET6") and found and is_loopback(found.group("addr")):
            continue
        bad.append(line)  # another address, or a family we do not know to be local
    return bad


# --- the reader of strace's log, itself tested: a test that cannot fail proves nothing -------------

TRACE_SAMPLE = """\
9979  connect(3, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("8.8.8.8")}, 16) = -1 ENETUNREACH (Network is unreachable)
9979  connect(3, {sa_family=AF_INET6, sin6_port=htons(9), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0
9979  connect(3, {sa_family=AF_INET, sin_port=htons(9), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
9979  connect(3, {sa_family=AF_INET, sin_port=htons(9), sin_addr=inet_addr("127.4.5.6")}, 16) = 0
9979  connect(3, {sa_family=AF_INET6, sin6_port=htons(9), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0
9979  connect(3, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2600:1901:0:38d7::", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>
9979  connect(3, {sa_family=AF_UNIX, sun_path="/tmp/ray/session_latest/sockets/raylet"}, 110) = 0
9979  connect(4, {sa_family=AF_UNIX, sun_path=@"abstract"}, 11) = -1 ECONNREFUSED (Connection refused)
9979  connect(5, {sa_family=AF_UNSPEC, sa_data="\\0\\0\\0\\0"}, 16) = 0
9979  connect(6, {sa_family=AF_PACKET, sll_protocol=htons(ETH_P_ALL)}, 20) = 0
9980  <... connect resumed>) = -1 ENETUNREACH (Network is unreachable)
9979  write(1, "connect(3, {sa_family=AF_INET...", 20) = 20
"""  # noqa: E501


def test_the_reader_finds_every_connect() -> None:
    assert len(connects(TRACE_SAMPLE)) == 10


def test_the_reader_flags_what_leaves_loopback() -> None:
    bad = forbidden_connects(TRACE_SAMPLE)
    assert len(bad) == 3
    assert '"8.8.8.8"' in bad[0] and "2600:1901" in bad[1] and "AF_PACKET" in bad[2]


def test_the_reader_passes_loopback_and_local_sockets() -> None:
    local = "\n".join(line for line in TRACE_SAMPLE.splitlines() if "8.8.8.8" not in line)
    local = "\n".join(line for line in local.splitlines() if "2600:" not in line and "AF_PACKET" not in line)
    assert forbidden_connects(local) == []
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.9.9.9")
    assert not is_loopback("10.0.0.1") and not is_loopback("::ffff:10.0.0.1") and not is_loopback("::")


# --- respublica up, cut off ----------------------------------------------------------------------


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (unshare -n)"
    for tool in ("unshare", "ip", "strace", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install strace iproute2 util-linux)"
    if any(importlib.util.find_spec(name) is None for name in ("vllm", "ray", "transformers")):
        return "the engine is not installed: pip install -e '.[gateway,engine-cpu]'"
    return None


@dataclass
class Offline:
    proc: subprocess.Popen[str]
    trace: Path
    env: dict[str, str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    api_key: str = ""

    def output(self) -> str:
        return "".join(self.stdout) + "\n--- stderr ---\n" + "".join(self.stderr[-60:])

    def up_pid(self) -> int:
        """`respublica up` itself: strace's child."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert children, "strace has no child"
        return int(children[0])


def _pump(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Offline]:
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the air-gap test cannot run in CI: {missing}")
        pytest.skip(missing)
    from respublica.serving.engine import processes

    marker = uuid.uuid4().hex
    trace = tmp_path_factory.mktemp("airgap") / "connect.trace"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")),
        XDG_DATA_HOME=str(tmp_path_factory.mktemp("data")),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
        **{MARKER_ENV: marker},
    )
    respublica = str(Path(sys.executable).parent / "respublica")
    # unshare execs the shell inside the new namespace, which brings loopback up and execs strace:
    # the process we started is strace, and `respublica up` is its child. --seccomp-bpf stops only
    # on connect(), so the engine runs at nearly full speed under the tracer.
    script = (
        'ip link set lo up && exec strace -f --seccomp-bpf -qq -e trace=connect -e signal=none -o "$0" "$@"'
    )
    command = ["unshare", "--net", "--", "sh", "-c", script, str(trace), respublica, "up", "--smoke"]
    command += ["--port", str(GATEWAY_PORT), "--engine-port", str(ENGINE_PORT)]
    command += ["--timeout", str(START_TIMEOUT_S)]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    running = Offline(proc=proc, trace=trace, env=env)
    for stream, sink in ((proc.stdout, running.stdout), (proc.stderr, running.stderr)):
        threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + 60
        while not any("Ctrl-C stops everything" in line for line in running.stderr):
            if proc.poll() is not None:
                time.sleep(0.5)
                pytest.fail(f"respublica up exited with {proc.returncode} before ready:\n{running.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"respublica up was not ready after {START_TIMEOUT_S}s:\n{running.output()}")
            time.sleep(0.5)
        key = re.search(r"API key for tenant local .*: (rp_\S+)$", "".join(running.stdout), re.MULTILINE)
        assert key, running.output()
        running.api_key = key.group(1)
        yield running
    finally:
        if proc.poll() is None:
            try:
                os.kill(running.up_pid(), signal.SIGINT)
                proc.wait(timeout=120)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        processes.end_processes(processes.pids_with_env(MARKER_ENV, marker), grace_s=2.0)


CALL = """
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=120)
reply = client.chat.completions.create(
    model=sys.argv[3], messages=[{"role": "user", "content": "Hello!"}], max_tokens=4, temperature=0
)
assert reply.usage is not None and reply.usage.completion_tokens > 0, reply
print("answered", reply.usage.completion_tokens)
"""


@pytest.mark.airgap
@pytest.mark.engine
def test_up_serves_through_the_gateway_with_only_loopback(offline: Offline) -> None:
    assert "First request answered" in "".join(offline.stdout), offline.output()
    # One more request, from the official client, entering the namespace's network (only there is the
    # gateway's loopback address).
    result = subprocess.run(
        [
            *("nsenter", f"--net=/proc/{offline.proc.pid}/ns/net", "--", sys.executable, "-c", CALL),
            *(f"http://127.0.0.1:{GATEWAY_PORT}/v1", offline.api_key, MODEL),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0 and "answered" in result.stdout, result.stdout + result.stderr


@dataclass(frozen=True)
class Finished:
    trace: str
    names: dict[int, str]  # pid -> command line, of the processes that called connect()

    def bad_connects(self) -> list[str]:
        """Forbidden connects, each with the command line of the process that made it."""
        return [
            f"{line}    [{self.names.get(_pid(line), '?')[:100]}]" for line in forbidden_connects(self.trace)
        ]


# Ray 2.60's dashboard process (started even with include_dashboard=False, with its usage-statistics
# module alone) used to ask the cloud metadata servers; `up` gives Ray's processes a HOME holding
# ray_bootstrap_config.yaml, which stops it (respublica/serving/engine/local.py `ray_home`).
DASHBOARD = "ray/dashboard/dashboard.py"


def _pid(line: str) -> int:
    return int(line.split()[0].strip("[]pid "))


def _command_lines(trace: Path) -> dict[int, str]:
    names = {}
    for line in connects(trace.read_text(errors="replace")):
        pid = _pid(line)
        try:
            names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return names


@pytest.fixture(scope="module")
def finished(offline: Offline) -> Finished:
    """`up` stopped with Ctrl-C (after the tests that use it running), and what strace saw."""
    names = _command_lines(offline.trace)  # while its processes are alive
    os.kill(offline.up_pid(), signal.SIGINT)
    assert offline.proc.wait(timeout=180) == 0, offline.output()  # strace exits with up's status
    return Finished(trace=offline.trace.read_text(errors="replace"), names=names)


@pytest.mark.airgap
@pytest.mark.engine
def test_up_connects_to_nothing_but_loopback(finished: Finished) -> None:
    # The trace saw the run: the gateway's connections to the engine, the engine's to Ray, and Ray's
    # dashboard (the process that asked the metadata servers before `up` gave Ray its own HOME).
    seen = connects(finished.trace)
    assert any(f"htons({ENGINE_PORT})" in line for line in seen), finished.trace[-3000:]
    assert any("AF_UNIX" in line for line in seen), finished.trace[-3000:]
    assert any(DASHBOARD in name for name in finished.names.values()), sorted(finished.names.values())
    bad = finished.bad_connects()
    assert not bad, f"{len(bad)} connect() calls left loopback:\n" + "\n".join(bad[:40])
