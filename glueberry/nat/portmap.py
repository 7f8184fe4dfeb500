"""Port mapping on the local gateway: NAT-PMP first, then UPnP IGD; renew; remove on stop.

Specs: RFC 6886 (NAT-PMP) and UPnP IGD v1/v2 ``WANIPConnection`` (``AddPortMapping``,
``DeletePortMapping``, ``GetExternalIPAddress``). Behaviour matched: go-libp2p's
``NATPortMap`` option (``p2p/net/nat``), which maps each TCP listen port and advertises
``/ip4/<external IP>/tcp/<external port>``.

Theory of operation
-------------------
:meth:`PortMapper.start` maps every given internal TCP port, asking for the same external
port. ``method="auto"`` tries NAT-PMP (one UDP round trip to the default gateway) and falls
back to UPnP (SSDP discovery, then SOAP) when no NAT-PMP gateway answers; ``"natpmp"`` or
``"upnp"`` force one. Each mapping yields an external multiaddr (the gateway's external IP
and the port it actually mapped) handed to ``on_change`` - the NAT manager advertises it.

One background task (in the owner's task group) renews every mapping at half its lifetime
(RFC 6886 §3.3; the same for UPnP leases) and retries failed ports with a doubling backoff.
:meth:`PortMapper.stop` deletes the mappings (best effort, bounded by a timeout) so nothing
is left open on the gateway after the node stops.

The gateway clients are :mod:`glueberry.nat.natpmp` and :mod:`glueberry.nat.upnp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from glueberry.errors import ConnectError, GlueberryError
from glueberry.nat.events import NatEvent, PortMapped, PortMappingFailed
from glueberry.nat.natpmp import NatPmpClient, default_gateway
from glueberry.nat.upnp import UpnpIgdClient
from glueberry.wire.multiaddr import Multiaddr

logger = logging.getLogger(__name__)

Method = Literal["auto", "natpmp", "upnp"]
#: Requested lifetime of a mapping, seconds.
DEFAULT_LIFETIME: Final = 3600
#: First retry delay after a failed mapping; doubles up to :data:`MAX_RETRY`.
RETRY: Final = 30.0
MAX_RETRY: Final = 1800.0
#: Seconds for removing all mappings at stop.
STOP_TIMEOUT: Final = 5.0


@dataclass(slots=True)
class _Mapping:
    internal_port: int
    method: Literal["natpmp", "upnp"] | None = None
    external: Multiaddr | None = None
    external_port: int = 0
    renew_at: float = 0.0
    failures: int = 0


class PortMapper:
    """Maps TCP listen ports on the gateway and keeps the mappings alive.

    Args:
        method: ``"auto"`` (NAT-PMP, then UPnP), ``"natpmp"`` or ``"upnp"``.
        gateway: NAT-PMP gateway address (default: the default route's gateway).
        lifetime: seconds asked for each mapping.
        discovery_window: seconds to wait for SSDP answers.
        publish: receives :class:`PortMapped` / :class:`PortMappingFailed` events.
        on_change: called with the current external addresses after every change.
    """

    def __init__(
        self,
        *,
        method: Method = "auto",
        gateway: str | None = None,
        lifetime: int = DEFAULT_LIFETIME,
        discovery_window: float = 2.0,
        publish: Callable[[NatEvent], None] | None = None,
        on_change: Callable[[list[Multiaddr]], None] | None = None,
    ) -> None:
        self.method = method
        self.gateway = gateway
        self.lifetime = lifetime
        self.discovery_window = discovery_window
        self._publish = publish
        self._on_change = on_change
        self._maps: dict[int, _Mapping] = {}
        self._natpmp: NatPmpClient | None = None
        self._upnp: UpnpIgdClient | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def external_addrs(self) -> list[Multiaddr]:
        return [m.external for m in self._maps.values() if m.external is not None]

    def _emit(self, event: NatEvent) -> None:
        if self._publish is not None:
            try:
                self._publish(event)
            except Exception:
                logger.exception("port mapping event subscriber failed")

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.external_addrs)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(
        self,
        ports: Sequence[int],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] | None = None,
    ) -> list[Multiaddr]:
        """Map ``ports`` now; start the renewal task with ``spawn`` (e.g. ``host.spawn``).

        Returns the external addresses obtained (possibly none: failures are events and
        are retried by the renewal task).
        """
        loop = asyncio.get_running_loop()
        for port in dict.fromkeys(ports):
            self._maps.setdefault(port, _Mapping(internal_port=port))
        for m in self._maps.values():
            await self._map(m, loop.time())
        self._changed()
        if spawn is not None and self._task is None:
            self._task = spawn(self._renew_loop())
        return self.external_addrs

    async def stop(self) -> None:
        """Stop renewing and delete every mapping (best effort, within 5 s)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                for m in self._maps.values():
                    await self._unmap(m)
        self._maps.clear()
        self._changed()

    # --- mapping -------------------------------------------------------------------------

    async def _map(self, m: _Mapping, now: float) -> None:
        methods: list[Literal["natpmp", "upnp"]] = (
            ["natpmp", "upnp"] if self.method == "auto" else [self.method]
        )
        if m.method is not None:  # renewals stay with what worked
            methods = [m.method]
        errors: list[str] = []
        for method in methods:
            try:
                if method == "natpmp":
                    addr, port, lifetime = await self._map_natpmp(m)
                else:
                    addr, port, lifetime = await self._map_upnp(m)
            except (GlueberryError, OSError) as exc:
                errors.append(f"{method}: {exc}")
                logger.debug("port mapping %d via %s failed: %r", m.internal_port, method, exc)
                continue
            m.method, m.external, m.external_port = method, addr, port
            m.renew_at = now + max(1.0, lifetime / 2)
            m.failures = 0
            self._emit(
                PortMapped(
                    protocol="tcp",
                    internal_port=m.internal_port,
                    external=addr,
                    method=method,
                    lifetime=float(lifetime),
                )
            )
            return
        m.failures += 1
        m.method = None
        m.external = None
        m.renew_at = now + min(MAX_RETRY, RETRY * 2 ** (m.failures - 1))
        self._emit(
            PortMappingFailed(
                protocol="tcp", internal_port=m.internal_port, reason="; ".join(errors)
            )
        )

    async def _map_natpmp(self, m: _Mapping) -> tuple[Multiaddr, int, int]:
        if self._natpmp is None:
            gw = self.gateway or default_gateway()
            if gw is None:
                raise ConnectError("no default gateway for NAT-PMP")
            self._natpmp = NatPmpClient(gw)
        client = self._natpmp
        ext_ip = await client.external_address()
        mapping = await client.map_port(
            "tcp",
            m.internal_port,
            external_port=m.external_port or m.internal_port,
            lifetime=self.lifetime,
        )
        addr = Multiaddr.from_socket_address(str(ext_ip), mapping.external_port)
        return addr, mapping.external_port, mapping.lifetime

    async def _map_upnp(self, m: _Mapping) -> tuple[Multiaddr, int, int]:
        if self._upnp is None:
            self._upnp = await UpnpIgdClient.discover(self.discovery_window)
        client = self._upnp
        ext_ip = await client.external_ip()
        port = m.external_port or m.internal_port
        await client.add_port_mapping("tcp", port, m.internal_port, lease=self.lifetime)
        return Multiaddr.from_socket_address(str(ext_ip), port), port, self.lifetime

    async def _unmap(self, m: _Mapping) -> None:
        try:
            if m.method == "natpmp" and self._natpmp is not None:
                await self._natpmp.unmap_port("tcp", m.internal_port)
            elif m.method == "upnp" and self._upnp is not None:
                await self._upnp.delete_port_mapping("tcp", m.external_port)
        except (GlueberryError, OSError) as exc:
            logger.info("removing port mapping %d failed: %r", m.internal_port, exc)
        m.external = None

    async def _renew_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = min((m.renew_at for m in self._maps.values()), default=None)
            if due is None:
                return
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            before = self.external_addrs
            for m in self._maps.values():
                if m.renew_at <= now:
                    await self._map(m, now)
            if self.external_addrs != before:
                self._changed()


__all__ = ["DEFAULT_LIFETIME", "Method", "PortMapper"]
