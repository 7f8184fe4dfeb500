"""Port-mapping client steps run inside a lab host (``ip netns exec <h1> python3 ...``).

``python3 gateway_client.py natpmp-map PORT`` / ``natpmp-unmap PORT`` / ``natpmp-ext`` /
``upnp-map EXT INT [CLIENT]`` / ``upnp-unmap EXT`` / ``upnp-ext``. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glueberry.errors import GlueberryError
from glueberry.nat.natpmp import NatPmpClient, default_gateway
from glueberry.nat.upnp import UpnpIgdClient


async def run(cmd: str, args: list[str]) -> dict[str, Any]:
    if cmd.startswith("natpmp"):
        gw = default_gateway()
        assert gw is not None
        c = NatPmpClient(gw, tries=4)
        if cmd == "natpmp-ext":
            return {"gateway": gw, "external": str(await c.external_address())}
        if cmd == "natpmp-map":
            m = await c.map_port("tcp", int(args[0]), lifetime=600)
            m2 = await c.renew(m)
            return {
                "external_port": m.external_port,
                "lifetime": m.lifetime,
                "renewed_port": m2.external_port,
                "epoch": m.epoch,
            }
        if cmd == "natpmp-unmap":
            await c.unmap_port("tcp", int(args[0]))
            return {}
    client = await UpnpIgdClient.discover(1.0)
    if cmd == "upnp-ext":
        return {
            "external": str(await client.external_ip()),
            "local": client.local_ip,
            "service": client.service.service_type,
        }
    if cmd == "upnp-map":
        mapping = await client.add_port_mapping(
            "tcp",
            int(args[0]),
            int(args[1]),
            internal_client=args[2] if len(args) > 2 else None,
            lease=600,
        )
        return {"internal_client": mapping.internal_client}
    if cmd == "upnp-unmap":
        await client.delete_port_mapping("tcp", int(args[0]))
        return {}
    raise SystemExit(f"unknown command {cmd}")


def main() -> int:
    try:
        out = {"ok": True, **asyncio.run(run(sys.argv[1], sys.argv[2:]))}
    except GlueberryError as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
