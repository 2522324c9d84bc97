"""Progress lines for logs: counts, rate and ETA from a controlled clock; one line per
interval; a bar only on a terminal."""

from __future__ import annotations

import io

from cord.progress import LineProgress, format_duration, progress_bar


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lines_rate_eta_and_interval():
    clock, out = Clock(), io.StringIO()
    with LineProgress(100, "cord eval x [audio]", "item", initial=20, stream=out, interval=30, clock=clock) as p:
        clock.t += 10
        p.update(5)  # first update: printed at once; 5 items in 10 s (the 20 resumed ones not counted)
        clock.t += 10
        p.update(5)  # 20 s after the last line? no: 10 s → quiet
        clock.t += 25
        p.update(10)  # 35 s since the last line → printed
    lines = out.getvalue().splitlines()
    assert lines == [
        "cord eval x [audio]: 25/100 items (25%), 0.5 items/s, ETA 0:02:30",
        "cord eval x [audio]: 40/100 items (40%), 0.444 items/s, ETA 0:02:15",
    ]  # close adds nothing: that line already says where it stopped
    clock, out = Clock(), io.StringIO()
    with LineProgress(10, "x", stream=out, interval=30, clock=clock) as p:
        p.update(1)
        clock.t += 5
        p.update(2)  # quiet (interval)
    assert out.getvalue().splitlines()[-1] == "x: 3/10 items (30%), 0.6 items/s, ETA 0:00:12"  # said on close


def test_finish_line_slow_rate_and_postfix():
    clock, out = Clock(), io.StringIO()
    p = LineProgress(2, "cord analyze", "example", stream=out, interval=1e9, clock=clock)
    clock.t += 40
    p.update(1)
    p.set_postfix(loss="0.5")
    clock.t += 40
    p.update(1)
    p.close()
    p.close()
    assert out.getvalue().splitlines() == [
        "cord analyze: 1/2 examples (50%), 40 s/example, ETA 0:00:40",
        "cord analyze: 2/2 examples (100%), 40 s/example, done in 0:01:20, loss=0.5",
    ]
    assert format_duration(3 * 3600 + 61.4) == "3:01:01"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_lines_in_a_log_nothing_when_disabled():
    assert isinstance(progress_bar(3, "x", stream=io.StringIO()), LineProgress)
    assert not isinstance(progress_bar(3, "x", stream=Tty()), LineProgress)
    quiet = io.StringIO()
    bar = progress_bar(3, "x", enabled=False, stream=quiet)
    bar.update(3)
    bar.close()
    assert quiet.getvalue() == ""
