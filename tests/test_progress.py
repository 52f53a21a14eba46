"""The progress line: drawn on a terminal (a fake one here), silent otherwise."""

import io

from mmbeam.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_draws_rows_rate_failures_and_bytes_on_a_terminal(clock):
    term = FakeTerminal()
    clock.now = 100.0
    progress = Progress(term, interval=0.5, clock=clock)
    assert progress.enabled
    progress.update("Download", done=1)
    progress.update("Upload", done=1)
    clock.now += 2.0
    progress.update("Download", done=99, inflight_bytes=3_000_000)
    progress.update("Upload", done=49, failed=2)
    line = progress.line()
    assert line == "rows 50 | 25.0 rows/s | failed 2 | in flight 3.0 MB"  # the slowest stage
    progress.finish()
    text = term.getvalue()
    assert text.startswith("\rrows 1 |") and text.endswith(line + "\x1b[K\n")
    assert text.count("\r") == 3  # first update, the one 2 s later, and finish (throttled between)


def test_silent_when_not_a_terminal(monkeypatch, clock):
    plain = io.StringIO()
    progress = Progress(plain, clock=clock)
    progress.update("Download", done=5)
    progress.finish()
    assert not progress.enabled and plain.getvalue() == ""
    monkeypatch.setenv("MMBEAM_PROGRESS", "0")
    assert not Progress(FakeTerminal()).enabled
