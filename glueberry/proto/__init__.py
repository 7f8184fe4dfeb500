"""Sans-I/O protocol state machines: bytes and ``now`` in, events and bytes out.

Nothing in this package may import asyncio, socket, time or random (checked by
``tests/test_layering.py``). Entropy, keys and time are passed in.
"""
