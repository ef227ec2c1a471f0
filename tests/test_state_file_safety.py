"""`serve`'s state file never follows a symlink or writes into a file it does not own (issue 19, item 2).

Another local user (or a script) pre-creates `S.lock`, `.S.<pid>.tmp` or `S` itself as a symlink to a file of the
victim's: before the fix the lock's target was truncated, the temporary file's target received the whole state
(token included) and stayed 0644, and `S` ended up a symlink to it. Now each is refused with one error naming the
path and why, and the targets are untouched. The real CLI (`prefactor-otel serve --state S`) runs as a subprocess
for the cases it can reach; the temporary file (named by the process's pid) is tested through `serve()` and
`StateFile` in this process.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from prefactor_otel.devserver import serve
from prefactor_otel.devserver.state_file import StateFile, StateFileError
from tests.test_serve_state import _env

_SAFETY_S = 60.0
SECRET = "the victim's own file: must stay exactly as it is\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text(SECRET)
    victim.chmod(0o644)
    return victim


def _serve_cli(tmp_path: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefactor_otel", "serve", "--port", "0", "--state", str(state)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=_SAFETY_S,
    )


def _untouched(victim: Path) -> None:
    assert victim.read_text() == SECRET
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


@pytest.mark.parametrize("which", ["lock", "state"])
def test_serve_refuses_a_state_or_lock_path_that_is_a_symlink_and_leaves_its_target_alone(
    tmp_path: Path, which: str
) -> None:
    victim = _victim(tmp_path)
    state = tmp_path / "state" / "local-server.json"
    state.parent.mkdir()
    link = state.with_name(state.name + ".lock") if which == "lock" else state
    link.symlink_to(victim)
    proc = _serve_cli(tmp_path, state)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(link) in lines[0] and "symbolic link" in lines[0], lines[0]
    _untouched(victim)
    assert link.is_symlink()  # not replaced, not followed
    assert "Prefactor dev server listening" not in proc.stdout


def test_serve_refuses_a_lock_or_state_path_that_is_not_a_regular_file(tmp_path: Path) -> None:
    state = tmp_path / "state" / "local-server.json"
    state.parent.mkdir()
    state.with_name(state.name + ".lock").mkdir()
    proc = _serve_cli(tmp_path, state)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr and ".lock" in proc.stderr, proc.stderr
    state.with_name(state.name + ".lock").rmdir()
    os.mkfifo(state)  # reading it would block forever: it must be refused, not opened for reading
    proc = _serve_cli(tmp_path, state)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr and str(state) in proc.stderr, proc.stderr


def _temporary(state: Path) -> Path:
    return state.with_name(f".{state.name}.{os.getpid()}.tmp")


def test_serve_refuses_a_temporary_path_that_is_a_symlink_and_writes_nothing_through_it(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    state = tmp_path / "state" / "local-server.json"
    state.parent.mkdir()
    _temporary(state).symlink_to(victim)
    out, err = io.StringIO(), io.StringIO()
    codes: list[int] = []
    # In a thread only so that a regression (serve running on) fails the test instead of hanging it.
    thread = threading.Thread(
        target=lambda: codes.append(serve(port=0, state_path=state, out=out, err=err, environ={})), daemon=True
    )
    thread.start()
    thread.join(_SAFETY_S)
    assert codes == [2], out.getvalue() + err.getvalue()
    assert str(_temporary(state)) in err.getvalue() and "symbolic link" in err.getvalue(), err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
    _untouched(victim)
    assert not state.exists() and not state.is_symlink()  # S never became a link to the victim


def test_a_temporary_symlink_planted_after_start_is_refused_at_the_next_save(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    state_file = StateFile(tmp_path / "local-server.json")
    state_file.acquire()
    try:
        state_file.write_text('{"first": 1}')
        _temporary(state_file.path).symlink_to(victim)
        with pytest.raises(StateFileError, match="symbolic link") as raised:
            state_file.write_text('{"token": "pf_secret"}')
        assert str(_temporary(state_file.path)) in str(raised.value)
    finally:
        state_file.release()
    _untouched(victim)
    assert not state_file.path.is_symlink() and state_file.path.read_text() == '{"first": 1}'
    assert stat.S_IMODE(state_file.path.stat().st_mode) == 0o600


def test_a_leftover_temporary_file_of_ours_is_replaced_and_every_file_is_0600(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "local-server.json")
    state_file.lock_path.write_text("")
    state_file.lock_path.chmod(0o666)
    _temporary(state_file.path).write_text("half a state from a crash")
    _temporary(state_file.path).chmod(0o644)
    old_umask = os.umask(0)  # a permissive umask must not widen any of them
    try:
        state_file.acquire()
        try:
            state_file.write_text('{"token": "pf_secret"}')
        finally:
            state_file.release()
    finally:
        os.umask(old_umask)
    assert state_file.path.read_text() == '{"token": "pf_secret"}'
    assert not _temporary(state_file.path).exists()
    assert stat.S_IMODE(state_file.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_file.lock_path.stat().st_mode) == 0o600
