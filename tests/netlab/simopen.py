"""TCP simultaneous open through NATs: one side of the punch (run inside a lab namespace).

``python3 simopen.py LOCAL_PORT REMOTE_IP REMOTE_PORT [TIMEOUT] [START_AT]``

Binds ``LOCAL_PORT`` (with SO_REUSEADDR, as hole punchers do), waits until the wall-clock
time ``START_AT`` (so both sides fire together), connects to ``REMOTE_IP:REMOTE_PORT`` and, on
success, exchanges one line with the peer. Prints one JSON object and exits 0 on success,
1 on failure. The kernel retransmits the SYN that the remote NAT dropped; the first SYN from
the other side opens our NAT's pinhole and the handshake completes as a simultaneous open.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def main() -> int:
    lport, rip, rport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 8.0
    start_at = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", lport))
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        s.connect((rip, rport))
        s.sendall(b"hello from %d\n" % lport)
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            line += chunk
        result = {"ok": True, "peer": list(s.getpeername()), "got": line.decode().strip()}
    except OSError as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        s.close()
    result["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
