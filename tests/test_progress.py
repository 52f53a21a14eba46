"""Progress in each mode: tqdm bars on a (pseudo-)terminal, widgets in a notebook, summary
lines in logs, nothing with MMBEAM_PROGRESS=0; and a quiet import of mmbeam and Beam."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap

import pytest

from mmbeam.progress import Progress, progress_mode


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_mode_follows_the_stream_and_the_environment(monkeypatch):
    monkeypatch.delenv("MMBEAM_PROGRESS", raising=False)
    assert progress_mode(FakeTerminal()) == "bars"
    assert progress_mode(io.StringIO()) == "log"
    monkeypatch.setenv("MMBEAM_PROGRESS", "0")
    assert progress_mode(FakeTerminal()) == "off"
    monkeypatch.setenv("MMBEAM_PROGRESS", "log")
    assert progress_mode(FakeTerminal()) == "log"
    with pytest.raises(ValueError, match="progress mode"):
        Progress(io.StringIO(), mode="fancy")


def test_log_mode_writes_a_summary_at_most_every_interval_and_a_last_one(clock):
    out = io.StringIO()
    progress = Progress(out, mode="log", log_interval=30.0, clock=clock)
    progress.update("Download", done=1, total=100)
    for _ in range(20):  # 20 s of updates: no summary yet
        clock.now += 1.0
        progress.update("Download", done=4, inflight_bytes=3_000_000)
    assert out.getvalue() == ""
    clock.now += 10.0
    progress.update("Upload", done=60, failed=2)
    lines = out.getvalue().splitlines()
    assert lines == ["mmbeam progress: Download 81 of 100 rows (2.7/s), 0 failed, 3.0 MB in "
                     "flight | Upload 60 rows (2.0/s), 2 failed"]
    clock.now += 5.0
    progress.update("Upload", done=21)
    assert len(out.getvalue().splitlines()) == 1  # 5 s later: still throttled
    progress.close()
    last = out.getvalue().splitlines()[-1]
    assert len(out.getvalue().splitlines()) == 2 and "Upload 81 rows" in last
    assert progress.stages == {}  # the next run starts anew


def test_bars_mode_draws_one_tqdm_bar_per_stage_with_failures_and_bytes():
    term = FakeTerminal()
    progress = Progress(term, mode="bars")
    progress.update("Download", done=10, inflight_bytes=5_000_000)
    progress.update("Upload", done=7, failed=3, total=20)
    bars = {name: state.bar for name, state in progress.stages.items()}
    assert bars["Download"].n == 10 and bars["Upload"].n == 7 and bars["Upload"].total == 20
    assert bars["Download"].pos != bars["Upload"].pos  # two lines, not one
    progress.close()
    text = term.getvalue()
    assert "Download" in text and "Upload" in text and "7/20" in text
    assert "failed=3" in text and "in flight=5.0 MB" in text


def test_off_mode_draws_nothing():
    term = FakeTerminal()
    progress = Progress(term, mode="off")
    progress.update("Download", done=5)
    progress.close()
    assert term.getvalue() == "" and progress.stages == {}


def test_notebook_mode_uses_widgets():
    pytest.importorskip("ipywidgets")
    progress = Progress(io.StringIO(), mode="notebook")
    progress.update("Decode", done=4, failed=1)
    bar = progress.stages["Decode"].bar
    from tqdm.notebook import tqdm as notebook_tqdm

    assert isinstance(bar, notebook_tqdm) and bar.n == 4
    progress.close()


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=environ, timeout=240, check=True)


PIPELINE = """
    import mmbeam
    import apache_beam as beam
    from mmbeam import transforms as mt
    from mmbeam.runners import local_pipeline
    from mmbeam.testing import sample_images

    images = list(sample_images(6, max_size=96).values())
    with local_pipeline() as p:
        good, failed = (p | beam.Create(images + [b"not an image"])
                        | mt.DecodeImage().with_exception_handling())
    frame = mmbeam.from_pydict({"a": [1, 2, 3]})
    mmbeam.context.set_execution_config(in_process=False)
    assert frame.to_pydict() == {"a": [1, 2, 3]}
"""


def test_import_and_run_print_nothing_but_mmbeams_own_messages():
    result = _run(PIPELINE, MMBEAM_PROGRESS="log")
    lines = result.stderr.splitlines()
    assert lines, "the log mode's last summary is expected"
    assert all(line.startswith("mmbeam progress: ") for line in lines), result.stderr
    assert "DecodeImage 6 rows" in result.stderr and "1 failed" in result.stderr
    assert _run(PIPELINE, MMBEAM_PROGRESS="0").stderr == ""


def test_a_terminal_gets_bars():
    """A real pseudo-terminal on stderr: tqdm draws the DecodeImage bar there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    environ.pop("MMBEAM_PROGRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PIPELINE)], env=environ,
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:  # ends: the child exits and the pty reports EOF/EIO
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=240) == 0
    os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert "DecodeImage" in screen and "rows" in screen and "\r" in screen
    assert "failed=1" in screen and "mmbeam progress:" not in screen
