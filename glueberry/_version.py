"""Package and protocol versions (leaf module)."""

from __future__ import annotations

from typing import Final

__version__: Final = "0.1.0"

#: The Glueberry wire protocol version this library speaks (the Go library's ``version.go``).
PROTOCOL_VERSION: Final = (1, 2, 9)
