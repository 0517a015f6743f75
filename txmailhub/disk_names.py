"""Names on disk in UTF-8, whatever the process's locale.

The hub names its files and folders in UTF-8: a Maildir folder after an
address (``jos\u00e9``, ``b\u00fccher.example``), and a path the config
file (UTF-8 text) names.  Python hands the file system calls a str in
the file system encoding, the locale's unless its UTF-8 mode is on: under
``LC_ALL=C`` with ``PYTHONUTF8=0`` that is ASCII, which cannot spell
``jos\u00e9`` at all (``UnicodeEncodeError``), and under a Latin-1 locale
it writes other octets (``jos\\xe9``) than a hub under UTF-8 does.
``on_disk`` gives the str those calls turn into the UTF-8 octets.  A path
given on the command line is in that form already (Python decoded its
octets so)."""

from __future__ import annotations

import os
import sys

__all__ = ["on_disk"]


def on_disk(name: str) -> str:
    """``name`` as the str the file system calls take for its UTF-8
    octets: itself where the file system encoding is UTF-8 or ``name``
    is ASCII; else its UTF-8 octets decoded as that encoding decodes a
    name it reads (``os.fsdecode``: surrogates for what it cannot read),
    which ``open`` and ``listdir`` turn back into the same octets."""
    if name.isascii() or sys.getfilesystemencoding() == "utf-8":
        return name
    return os.fsdecode(name.encode("utf-8", "surrogateescape"))
