"""Fuzz target: SSDP, device description XML, SOAP and HTTP response parsing."""

from __future__ import annotations

from glueberry.errors import RemoteProtocolError
from glueberry.proto import upnp as u

SEEDS = [
    b"HTTP/1.1 200 OK\r\nST: x\r\nLOCATION: http://192.168.1.1:5555/rootDesc.xml\r\n\r\n",
    b'<?xml version="1.0"?><root><device><serviceList><service><serviceType>'
    b"urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl</controlURL>"
    b"</service></serviceList></device></root>",
    b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
    b"<u:AddPortMappingResponse/></s:Body></s:Envelope>",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b'<!DOCTYPE r [<!ENTITY x "y">]><r>&x;</r>',
]


def TARGET(data: bytes) -> None:
    for fn in (
        u.parse_ssdp_response,
        lambda d: u.parse_description(d, "http://192.168.1.1:5555/rootDesc.xml"),
        lambda d: u.parse_soap_response(200, d, "AddPortMapping"),
        lambda d: u.parse_soap_response(500, d, "AddPortMapping"),
        lambda d: u.parse_http_response(d, max_body=4096),
    ):
        try:
            fn(data)
        except RemoteProtocolError:
            pass
