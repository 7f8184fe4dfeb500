"""What a test may leave behind: counts of the process's open sockets.

Sockets, not all file descriptors: an event loop keeps its own descriptors (uvloop opens an
eventfd and a few others lazily, on first use, and keeps them until the loop closes), so a
plain descriptor count would blame the test for the loop. Every socket the stack opens is a
``socket:[inode]`` entry of ``/proc/self/fd``.
"""

from __future__ import annotations

import os


def open_sockets() -> int:
    """Sockets this process has open (Linux ``/proc/self/fd``)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:  # closed meanwhile (the listing's own descriptor, for one)
            pass
    return n
