"""SMTP replies as values.

A ``Reply`` is a code, an RFC 3463 enhanced status, and one or more text
lines.  The status is ``None`` on the replies that go without one: those
RFC 2034 3 (4) exempts -- "the initial greeting and any response to HELO
or EHLO", which the hub sends without it (an exemption, not a ban: a 421
there carries one) -- and the 3xx ones it leaves out (4: "3xx responses
are NOT included": the 354, the AUTH 334s).  Every other reply carries
one, the 220 to STARTTLS and the 221 to QUIT too, whether the client said
EHLO or HELO (4: "regardless of whether or not EHLO is employed").
Production code and tests share the catalog constants defined in
``txmailhub.smtp.replies``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LocalReply", "Reply"]


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    status: str | None
    lines: tuple[str, ...]

    @classmethod
    def of(cls, code: int, status: str | None, *lines: str) -> Reply:
        return cls(code, status, tuple(lines) or ("",))

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def text(self) -> str:
        """The reply as one human-readable line: ``550 5.1.1 text``."""
        head = f"{self.code} {self.status} " if self.status else f"{self.code} "
        return head + " / ".join(self.lines)

    def to_bytes(self, enhanced: bool = True) -> bytes:
        """Wire form; ``enhanced=False`` drops the RFC 3463 status."""
        status = f"{self.status} " if (enhanced and self.status) else ""
        lines = self.lines
        if len(lines) == 1:  # nearly every reply: no list, no join
            return f"{self.code} {status}{lines[0]}\r\n".encode("utf-8", "replace")
        out = []
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            out.append(f"{self.code}{sep}{status}{line}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def __str__(self) -> str:
        return self.text()


@dataclass(frozen=True, slots=True)
class LocalReply(Reply):
    """A reply this hub made up about a delivery (a timeout, a protocol
    error, a limit it checked itself) rather than one a server sent: a
    bounce must not quote it as the remote server's words (RFC 3464 2.3.6,
    the ``smtp`` diagnostic type is what the remote MTA said)."""
