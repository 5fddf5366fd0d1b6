"""README walk-throughs run as written.

Every fenced ```bash block of README.md that is immediately preceded by the line
``<!-- walkthrough -->`` is run with bash in a new shell: a clean environment, a fresh copy of the
repository as the working folder (a user's clone, with the repository's ``.venv``, activated with
``source .venv/bin/activate`` as the README's top says), ``set -e``.
The test asserts that the block succeeds, creates what its commands say they write (``--out``,
``make-tiny DIR``, ``run.output_dir=...``), prints no traceback or library noise, leaves no process
running, and that whatever it creates is ignored by git. A failure names the block, the command
and its output.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MARKER = "<!-- walkthrough -->"
TRACE = "+README> "  # bash's PS4: marks each command the block runs
TIMEOUT_S = 300
STOP_GRACE_S = 20  # how long a stopped server may take to exit
# Options and arguments whose value is a file or folder the command writes.
OUTPUT_OPTIONS = ("--out", "--workdir")
OUTPUT_SETTINGS = ("run.output_dir",)
OUTPUT_POSITIONAL = {("make-tiny",), ("bench", "make-synthetic")}
# What a clean run must not print (our commands silence these; see shared/logs.py).
NOISE = [
    (re.compile(r"^Traceback \(most recent call last\)", re.M), "a traceback"),
    (re.compile(r"\bINFO (root|httpx|httpcore|huggingface_hub)[.:]"), "a library's INFO log line"),
    (re.compile(r"Loading weights|Loading checkpoint shards|Loading pipeline components"), "a weight-loading bar"),
    (re.compile(r"\b(UserWarning|FutureWarning|DeprecationWarning)\b|is deprecated"), "a library warning"),
]


@dataclass(frozen=True)
class Walkthrough:
    """One tagged block: its id (section heading), where it starts and its text."""

    id: str
    line: int
    code: str


def parse_walkthroughs(text: str) -> list[Walkthrough]:
    """The tagged ```bash blocks of a README; a marker not followed by one is an error."""
    lines = text.splitlines()
    found: list[Walkthrough] = []
    heading = "top"
    for i, line in enumerate(lines):
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.strip() != MARKER:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```bash":
            raise ValueError(f"README.md line {i + 1}: {MARKER} must be followed directly by a ```bash block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md line {i + 2}: the walk-through block is not closed")
        slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
        same = sum(w.id.split("#")[0] == slug for w in found)
        found.append(Walkthrough(f"{slug}#{same + 1}" if same else slug, i + 2, "\n".join(lines[i + 2 : end])))
    return found


def commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        with contextlib.suppress(ValueError):
            words = shlex.split(line, comments=True)
            if words:
                out.append(" ".join(words))
    return out


def promised_outputs(code: str, workdir: Path) -> list[Path]:
    """Files and folders the block's commands say they write."""
    paths = []
    for command in commands(code):
        words = shlex.split(command.replace("${PWD}", str(workdir)).replace("$PWD", str(workdir)))
        args = [w for w in words if not w.startswith("-")]
        for i, word in enumerate(words):
            if word in OUTPUT_OPTIONS and i + 1 < len(words):
                paths.append(words[i + 1])
            for key in OUTPUT_SETTINGS:
                if word.startswith(key + "="):
                    paths.append(word.split("=", 1)[1])
        for prefix in OUTPUT_POSITIONAL:
            n = len(prefix)
            if words[:1] == ["psr"] and tuple(args[1 : 1 + n]) == prefix and len(args) > 1 + n:
                paths.append(args[1 + n])
    return [Path(p) if Path(p).is_absolute() else workdir / p for p in paths]


def ports(code: str) -> list[int]:
    """TCP ports the block names (``--port N``, ``host:N`` in URLs)."""
    found = {int(p) for p in re.findall(r"--port[ =](\d+)", code)}
    found |= {int(p) for p in re.findall(r"://[\w.\-]+:(\d+)", code)}
    return sorted(found)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def port_locks(numbers: list[int], wait_s: float = 120.0) -> Iterator[None]:
    """Serialise blocks that use the same port across test runs on one machine (shared dev hosts),
    and wait for anything else on those ports to go: a server of the block that cannot bind would
    leave its clients talking to a stranger."""
    with contextlib.ExitStack() as stack:
        for port in numbers:
            handle = stack.enter_context(open(Path(tempfile.gettempdir()) / f"psr-walkthrough-port-{port}.lock", "w"))
            fcntl.flock(handle, fcntl.LOCK_EX)
        deadline = time.monotonic() + wait_s
        busy = [p for p in numbers if not port_free(p)]
        while busy and time.monotonic() < deadline:
            time.sleep(1)
            busy = [p for p in busy if not port_free(p)]
        if busy:
            pytest.fail(f"ports {busy} that the block uses are taken by another process on this machine")
        yield


def fresh_clone(dest: Path) -> Path:
    """The repository's files (as in a clone: tracked and not ignored) plus its .venv, as git sees them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(source.read_bytes())
            (dest / name).chmod(source.stat().st_mode)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    (dest / ".venv").symlink_to(REPO / ".venv")  # a symlink, which `.venv/` in .gitignore does not match
    with open(dest / ".git" / "info" / "exclude", "a") as exclude:
        exclude.write("/.venv\n")
    return dest


def new_shell_env(home: Path) -> dict[str, str]:
    """What a new login shell has: no virtualenv, no PYTHONPATH, nothing of the test process."""
    return {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "dumb",
            "TMPDIR": tempfile.gettempdir()}


def failed_command(output: str) -> str:
    """The last command bash traced (a trace may follow output that did not end its line)."""
    traced = [line[line.index(TRACE) + len(TRACE):] for line in output.splitlines() if TRACE in line]
    return traced[-1] if traced else "(before the first command)"


def run_block(block: Walkthrough, workdir: Path, scratch: Path, grace_s: float = STOP_GRACE_S) -> tuple[int, str, bool]:
    """Run the block in a new session; returns (exit code, output, whether it left processes running)."""
    script = scratch / "walkthrough.sh"
    script.write_text(  # as the README's top says: activate the environment in every new shell
        f"set -euo pipefail\nsource .venv/bin/activate\nPS4={shlex.quote(TRACE)}\nset -x\n{block.code}\n")
    home = scratch / "home"
    home.mkdir(exist_ok=True)
    log = scratch / "output.log"  # a file, not a pipe: a background job left running must not hold us up
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "--noprofile", "--norc", str(script)], cwd=workdir, env=new_shell_env(home),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return 124, log.read_text(errors="replace") + f"\n[timed out after {TIMEOUT_S} s]", False
    deadline = time.monotonic() + grace_s  # what the block stopped may still be shutting down
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = _group_alive(proc.pid)
    if leftover:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, log.read_text(errors="replace"), leftover


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


BLOCKS = parse_walkthroughs(README.read_text())


def test_the_readme_has_walkthroughs_and_the_parser_finds_them():
    ids = [b.id for b in BLOCKS]
    assert any(i.startswith("psrbench") for i in ids) and len(ids) >= 2, ids
    sample = f"# A\n{MARKER}\n```bash\npsr make-tiny m   # c\npsr x --out o \\\n   --y 1\n```\n## B\n{MARKER}\n"
    with pytest.raises(ValueError, match="must be followed directly"):
        parse_walkthroughs(sample)
    block = parse_walkthroughs(sample.rsplit("## B", 1)[0])[0]
    assert block.id == "a" and commands(block.code) == ["psr make-tiny m", "psr x --out o --y 1"]
    assert promised_outputs(block.code, Path("/w")) == [Path("/w/m"), Path("/w/o")]
    assert ports("psr serve --port 8001 &\ncurl http://127.0.0.1:8002/x") == [8001, 8002]


def test_the_runner_names_the_failing_command_and_sees_leftover_processes(tmp_path):
    def workdir(name: str) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / ".venv").symlink_to(REPO / ".venv")
        (tmp_path / f"{name}-scratch").mkdir()
        return tmp_path / name

    block = Walkthrough("t", 1, "echo one\nprintf 'no newline'\nfalse   # fails\necho never")
    code, output, leftover = run_block(block, workdir("w"), tmp_path / "w-scratch")
    assert code == 1 and failed_command(output) == "false" and "never" not in output and not leftover
    code, output, leftover = run_block(Walkthrough("t", 1, "sleep 60 &\necho started"), workdir("v"),
                                       tmp_path / "v-scratch", grace_s=0.2)
    assert code == 0 and leftover
    env = run_block(Walkthrough("t", 1, "env; command -v psr"), workdir("e"), tmp_path / "e-scratch")[1]
    assert f"VIRTUAL_ENV={REPO / '.venv'}" in env and "PYTEST_CURRENT_TEST" not in env and "PYTHONPATH" not in env
    assert f"{REPO / '.venv'}/bin/psr" in env


def test_walkthroughs_do_not_share_ports():
    used: dict[int, str] = {}
    for block in BLOCKS:
        for port in ports(block.code):
            assert port not in used, f"README blocks {used.get(port)} and {block.id} both use port {port}"
            used[port] = block.id


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """Every fenced ```bash block of a README: (line of its first command, its text)."""
    return [(text[: m.start(1)].count("\n") + 1, m.group(1)) for m in re.finditer(r"^```bash\n(.*?)^```", text, re.M | re.S)]


def stop_problems(code: str) -> list[str]:
    """Why a block would stop the wrong process, or none, when a user runs the README's sections one after
    another in one shell: a job number (``kill %1``) names whatever that shell started first, so every
    block stops what it started by the PID it saved (``SERVER=$!`` ... ``kill $SERVER``)."""
    problems = [f"`{line.strip()}`: a job number depends on what the shell ran before; save `$!` and kill that"
                for line in code.splitlines() if re.search(r"\bkill\s+%", line)]
    lines = re.sub(r"\\\n\s*", " ", code).splitlines()
    for i, line in enumerate(lines):
        command = line.split(" #", 1)[0].rstrip()
        if not (command.endswith("&") and not command.endswith("&&")):
            continue
        saved = re.match(r"\s*(\w+)=\$!", lines[i + 1]) if i + 1 < len(lines) else None
        if saved is None:
            problems.append(f"`{command}`: save its PID on the next line (SERVER=$!) to stop it later")
        elif not re.search(rf"\bkill\s+(\S+\s+)*\${{?{saved.group(1)}\b", "\n".join(lines[i + 2:])):
            problems.append(f"`{command}`: the block never runs `kill ${saved.group(1)}`")
    return problems


def test_the_stop_check_sees_job_numbers_and_unsaved_pids():
    assert stop_problems("psr serve --port 1 &\nSERVER=$!\npsr score x\nkill $SERVER") == []
    assert stop_problems("psr serve \\\n  --port 1 &   # comment\nSERVER=$!\nkill $SERVER   # stop") == []
    assert stop_problems("a && b\nkill $OTHER") == []
    assert len(stop_problems("psr serve --port 1 &\npsr score x\nkill %1")) == 2
    assert "never runs `kill $SERVER`" in stop_problems("psr serve &\nSERVER=$!\nkill $OTHER")[0]


def test_readme_blocks_stop_the_servers_they_start_by_pid():
    """Each walk-through stops its servers, and by PID: run section after section in one shell (as a user
    does), `kill %1` stopped an earlier section's server and left the new one running after the shell exited."""
    text = README.read_text()
    for block in BLOCKS:
        assert not stop_problems(block.code), f"README block '{block.id}' (line {block.line}): {stop_problems(block.code)}"
    for line, code in bash_blocks(text):  # sketches too: no job numbers anywhere
        jobs = [p for p in stop_problems(code) if "job number" in p]
        assert not jobs, f"README.md line {line}: {jobs}"


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_walkthrough_runs_as_written(block: Walkthrough, tmp_path: Path) -> None:
    assert (REPO / ".venv" / "bin" / "activate").is_file(), "the walk-throughs use the repository's .venv: run " \
        "scripts/setup.sh first"
    workdir = fresh_clone(tmp_path / "clone")
    where = f"README block '{block.id}' (README.md line {block.line})"
    with port_locks(ports(block.code)):
        code, output, leftover = run_block(block, workdir, tmp_path)
    tail = "\n".join(output.splitlines()[-60:])
    assert code == 0, f"{where} failed at `{failed_command(output)}` (exit {code}); output:\n{tail}"
    assert not leftover, f"{where} left processes running (stop what the block starts); output:\n{tail}"
    for path in promised_outputs(block.code, workdir):
        assert path.exists() and (path.is_file() or any(path.iterdir())), \
            f"{where}: {path.relative_to(workdir) if path.is_relative_to(workdir) else path} was not written"
    for pattern, what in NOISE:
        match = pattern.search(output)
        assert match is None, f"{where} printed {what}: {output[max(0, match.start() - 300):match.end() + 300]}"
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"], cwd=workdir,
                            capture_output=True, text=True, check=True).stdout
    stray = [line[3:] for line in status.splitlines() if line.startswith("??")]
    assert not stray, f"{where} creates {stray}, which .gitignore does not cover"
