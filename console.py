"""
console.py: output that any console or log file takes. The project prints π, β, ‖ and —; where Python's default
encoding is a legacy code page (Windows' cp1252, and a log file that a run's output is redirected to there),
printing them raised UnicodeEncodeError at the end of a run. Every command-line entry point calls utf8_output
first. Standard library only: exercises.py imports it.
"""
import codecs
import sys


def utf8_stream(stream):
    """Make stream able to write any text. A stream whose encoding is not a UTF one is switched to UTF-8 where it
    is redirected (a file or a pipe, read back as UTF-8 like every file the project writes), and to
    errors="replace" on a terminal (whose encoding is the terminal's own: a character it cannot show becomes
    "?"). Other streams (UTF ones, or without an encoding to change) are left as they are. Returns the stream."""
    encoding = getattr(stream, "encoding", None)
    if not encoding or not hasattr(stream, "reconfigure") or codecs.lookup(encoding).name.startswith("utf"):
        return stream
    if stream.isatty():
        stream.reconfigure(errors="replace")
    else:
        stream.reconfigure(encoding="utf-8")
    return stream


def utf8_output():
    """utf8_stream on sys.stdout and sys.stderr: the first thing each command-line entry point does."""
    for stream in (sys.stdout, sys.stderr):
        utf8_stream(stream)
