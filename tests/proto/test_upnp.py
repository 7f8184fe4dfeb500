"""UPnP IGD codecs (glueberry.proto.upnp): SSDP, description, SOAP, HTTP, hostile XML."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glueberry.errors import LocalProtocolError, RemoteProtocolError
from glueberry.proto import upnp as u

SSDP_OK = (
    b"HTTP/1.1 200 OK\r\n"
    b"CACHE-CONTROL: max-age=120\r\n"
    b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    b"USN: uuid:abc::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    b"EXT:\r\n"
    b"SERVER: Debian UPnP/1.1 MiniUPnPd/2.3.1\r\n"
    b"LOCATION: http://192.168.1.1:5555/rootDesc.xml\r\n"
    b"\r\n"
)

DESCRIPTION = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
 <device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
  <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
   <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
    <serviceList>
     <service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
      <controlURL>/ctl/IPConn</controlURL></service>
    </serviceList>
   </device></deviceList>
  </device></deviceList>
 </device>
</root>"""

SOAP_OK = b"""<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">
<NewExternalIPAddress>203.0.113.5</NewExternalIPAddress>
</u:GetExternalIPAddressResponse></s:Body></s:Envelope>"""

SOAP_FAULT = b"""<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>
<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>
<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718</errorCode>
<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError>
</detail></s:Fault></s:Body></s:Envelope>"""


def test_msearch() -> None:
    msg = u.build_msearch()
    assert msg.startswith(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert b'MAN: "ssdp:discover"\r\n' in msg and msg.endswith(b"\r\n\r\n")
    with pytest.raises(LocalProtocolError):
        u.build_msearch("x\r\nEvil: 1")


def test_ssdp_response() -> None:
    r = u.parse_ssdp_response(SSDP_OK)
    assert r.location == "http://192.168.1.1:5555/rootDesc.xml"
    assert r.st == u.IGD_V1 and "MiniUPnPd" in r.server


@pytest.mark.parametrize(
    "bad",
    [
        b"NOTIFY * HTTP/1.1\r\nLOCATION: http://a/\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nLOCATION: http://a/\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # no LOCATION
        b"HTTP/1.1 200 OK\r\nLOCATION: file:///etc/passwd\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nLOCATION: http://[::1/\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 100 + b"\r\n",
        SSDP_OK + b"x" * 5000,
    ],
)
def test_ssdp_rejects(bad: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        u.parse_ssdp_response(bad)


def test_description_finds_control_url() -> None:
    svc = u.parse_description(DESCRIPTION, "http://192.168.1.1:5555/rootDesc.xml")
    assert svc == u.IgdService(
        service_type=u.WAN_IP_V1, control_url="http://192.168.1.1:5555/ctl/IPConn"
    )


def test_description_prefers_v2_and_refuses_foreign_control_url() -> None:
    both = DESCRIPTION.replace(
        b"</serviceList>",
        b"<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>"
        b"<controlURL>/ctl/IP2</controlURL></service></serviceList>",
    )
    assert u.parse_description(both, "http://10.0.0.1/d.xml").control_url.endswith("/ctl/IP2")
    foreign = DESCRIPTION.replace(b"/ctl/IPConn", b"http://203.0.113.66/ctl")
    with pytest.raises(RemoteProtocolError, match="another host"):
        u.parse_description(foreign, "http://192.168.1.1:5555/rootDesc.xml")
    none = DESCRIPTION.replace(b"WANIPConnection:1", b"Layer3Forwarding:1")
    with pytest.raises(RemoteProtocolError):
        u.parse_description(none, "http://192.168.1.1/")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<root>&lol2;</root>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><root>&x;</root>"""


@pytest.mark.parametrize(
    "doc",
    [
        BILLION_LAUGHS,
        XXE,
        b"<root>" * 40 + b"</root>" * 40,  # too deep
        b"<root><unclosed></root>",
        b"not xml at all",
        b"<root>" + b"x" * (u.MAX_DESCRIPTION + 1) + b"</root>",
        b"<root>&undefined;</root>",
    ],
)
def test_hostile_xml_refused(doc: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        u.parse_description(doc, "http://192.168.1.1/")


def test_soap_request_and_responses() -> None:
    args = u.add_port_mapping_args(
        protocol="tcp",
        external_port=45000,
        internal_port=40001,
        internal_client="192.168.1.10",
        description="glue<&>berry",
        lease=3600,
    )
    body, action = u.build_soap_request(u.WAN_IP_V1, "AddPortMapping", args)
    assert action == '"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"'
    assert b"<NewExternalPort>45000</NewExternalPort>" in body
    assert b"glue&lt;&amp;&gt;berry" in body
    ok = u.parse_soap_response(200, SOAP_OK, "GetExternalIPAddress")
    assert ok.ok and ok.values == {"NewExternalIPAddress": "203.0.113.5"}
    fault = u.parse_soap_response(500, SOAP_FAULT, "AddPortMapping")
    assert not fault.ok and fault.fault_code == 718
    assert fault.fault_description == "ConflictInMappingEntry"
    with pytest.raises(RemoteProtocolError):
        u.parse_soap_response(200, SOAP_OK, "AddPortMapping")  # wrong response element
    with pytest.raises(RemoteProtocolError):
        u.parse_soap_response(500, SOAP_OK, "GetExternalIPAddress")
    with pytest.raises(LocalProtocolError):
        u.build_soap_request(u.WAN_IP_V1, "Bad Action", [])
    with pytest.raises(LocalProtocolError):
        u.add_port_mapping_args(
            protocol="sctp",
            external_port=1,
            internal_port=1,
            internal_client="1.2.3.4",
            description="",
            lease=0,
        )
    with pytest.raises(LocalProtocolError):
        u.add_port_mapping_args(
            protocol="tcp",
            external_port=1,
            internal_port=1,
            internal_client="nope",
            description="",
            lease=0,
        )


def test_http_build_and_parse() -> None:
    req = u.build_http_request(
        "POST", "http://192.168.1.1:5555/ctl/IPConn", body=b"abc", headers=[("SOAPAction", "x")]
    )
    assert req.startswith(b"POST /ctl/IPConn HTTP/1.1\r\nHost: 192.168.1.1:5555\r\n")
    assert req.endswith(b"Content-Length: 3\r\n\r\nabc")
    with pytest.raises(LocalProtocolError):
        u.build_http_request("GET", "http://a/", headers=[("X", "1\r\nY: 2")])
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert u.parse_http_response(resp, max_body=10) == (200, {"content-length": "5"}, b"hello")
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"
    )
    assert u.parse_http_response(chunked, max_body=10)[2] == b"hello!"
    for bad in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",
    ):
        with pytest.raises(RemoteProtocolError):
            u.parse_http_response(bad, max_body=10)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_parsers_raise_only_remote_protocol_error(data: bytes) -> None:
    for fn in (
        u.parse_ssdp_response,
        lambda d: u.parse_description(d, "http://10.0.0.1/"),
        lambda d: u.parse_soap_response(200, d, "AddPortMapping"),
        lambda d: u.parse_http_response(d, max_body=100),
    ):
        try:
            fn(data)
        except RemoteProtocolError:
            pass
