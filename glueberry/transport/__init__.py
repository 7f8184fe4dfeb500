"""I/O edge: sockets to byte streams and datagrams. asyncio lives here and in ``net``."""
