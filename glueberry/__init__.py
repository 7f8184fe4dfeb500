"""glueberry: encrypted peer-to-peer messaging on asyncio, wire-compatible with libp2p.

The public API is re-exported here; everything else lives in private modules.
"""

from __future__ import annotations

from glueberry._version import PROTOCOL_VERSION, __version__

__all__ = ["PROTOCOL_VERSION", "__version__"]
