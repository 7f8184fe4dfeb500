"""libp2p TLS certificates: the spec's test vectors, round trips and hostile certificates (B-06)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from glueberry.errors import RemoteProtocolError
from glueberry.wire import tlscert
from glueberry.wire.identity import PeerId, PrivateKey

NOW = 1_900_000_000.0  # 2030-03-17

# libp2p/specs tls/tls.md "Test vectors".
VECTOR_ED25519 = (
    "308201ae30820156a0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c"
    "69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f3430393630"
    "3130313133303030305a302031123010060355040a13096c69627032702e696f310a30080603550405130131"
    "3059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba13272"
    "1bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e3"
    "81569ea37c307a3078060a2b0601040183a25a0101046a3068042408011220a77f1d92fedb59dddaea5a1c4a"
    "bd1ac2fbde7d7b879ed364501809923d7c11b90440d90d2769db992d5e6195dbb08e706b6651e024fda6cfb8"
    "846694a435519941cac215a8207792e42849cccc6cd8136c6e4bde92a58c5e08cfd4206eb5fe0bf909300a06"
    "082a8648ce3d0403020346003043021f50f6b6c52711a881778718238f650c9fb48943ae6ee6d28427dc6071"
    "ae55e702203625f116a7a454db9c56986c82a25682f7248ea1cb764d322ea983ed36a31b77"
)
VECTOR_ECDSA = (
    "308201f63082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c"
    "69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f3430393630"
    "3130313133303030305a302031123010060355040a13096c69627032702e696f310a30080603550405130131"
    "3059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba13272"
    "1bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e3"
    "81569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a86"
    "48ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155d"
    "e0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f20447304502"
    "20064ea8124774caf8f50e57f436aa62350ce652418c019df5d98a3ac666c9386a022100aa59d704a931b5f7"
    "2fb9222cb6cc51f954d04a4e2e5450f8805fe8918f71eaae300a06082a8648ce3d0403020347003044022079"
    "9395b0b6c1e940a7e4484705f610ab51ed376f19ff9d7c16757cfbf61b8d4302206205c03fbb0f95205c779b"
    "e86581d3e31c01871ad5d1f3435bcf375cb0e5088a"
)
VECTOR_SECP256K1 = (
    "308201ba3082015fa0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c"
    "69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f3430393630"
    "3130313133303030305a302031123010060355040a13096c69627032702e696f310a30080603550405130131"
    "3059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba13272"
    "1bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e3"
    "81569ea38184308181307f060a2b0601040183a25a01010471306f0425080212210206dc6968726765b820f0"
    "50263ececf7f71e4955892776c0970542efd689d2382044630440220145e15a991961f0d08cd15425bb95ec9"
    "3f6ffa03c5a385eedc34ecf464c7a8ab022026b3109b8a3f40ef833169777eb2aa337cfb6282f188de0666d1"
    "bcec2a4690dd300a06082a8648ce3d0403020349003046022100e1a217eeef9ec9204b3f774a08b708496"
    "46b6a1e6b8b27f93dc00ed58545d9fe022100b00dafa549d0f03547878338c7b15e7502888f6d45db387e5ae"
    "6b5d46899cef0"
)
VECTOR_INVALID = (
    "308201f73082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c"
    "69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f3430393630"
    "3130313133303030305a302031123010060355040a13096c69627032702e696f310a30080603550405130131"
    "3059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba13272"
    "1bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e3"
    "81569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a86"
    "48ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155d"
    "e0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f20447304502"
    "2100bb6e03577b7cc7a3cd1558df0da2b117dfdcc0399bc2504ebe7de6f65cade72802206de96e2a5be9b620"
    "2adba24ee0362e490641ac45c240db71fe955f2c5cf8df6e300a06082a8648ce3d0403020348003045022100"
    "e847f267f43717358f850355bdcabbefb2cfbf8a3c043b203a14788a092fe8db022027c1d04a2d41fd6b57a7"
    "e8b3989e470325de4406e52e084e34a3fd56eef0d0df"
)


@pytest.mark.parametrize(
    ("cert_hex", "peer"),
    [
        (VECTOR_ED25519, "12D3KooWM6CgA9iBFZmcYAHA6A2qvbAxqfkmrYiRQuz3XEsk4Ksv"),
        (VECTOR_ECDSA, "QmfXbAwNjJLXfesgztEHe8HwgVDCMMpZ9Eax1HYq6hn9uE"),
        (VECTOR_SECP256K1, "16Uiu2HAkutTMoTzDw1tCvSRtu6YoixJwS46S1ZFxW8hSx9fWHiPs"),
    ],
    ids=["ed25519", "ecdsa", "secp256k1"],
)
def test_spec_valid_vectors(cert_hex: str, peer: str) -> None:
    key = tlscert.verify_certificate_chain([bytes.fromhex(cert_hex)], NOW)
    assert PeerId.from_public_key(key) == PeerId.from_string(peer)
    assert tlscert.peer_id_of([bytes.fromhex(cert_hex)], NOW) == PeerId.from_string(peer)


def test_spec_invalid_vector() -> None:
    with pytest.raises(RemoteProtocolError, match="identity signature"):
        tlscert.verify_certificate(bytes.fromhex(VECTOR_INVALID), NOW)


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ed25519"])
@pytest.mark.parametrize("critical", [True, False])
def test_generate_and_verify(key_type: tlscert.CertKeyType, critical: bool) -> None:
    identity = PrivateKey.from_seed(b"\x07" * 32)
    local = tlscert.generate_certificate(identity, NOW, key_type=key_type, critical=critical)
    key = tlscert.verify_certificate_chain([local.der], NOW)
    assert PeerId.from_public_key(key) == identity.peer_id
    ext = local.certificate.extensions.get_extension_for_oid(tlscert.EXTENSION_OID)
    assert ext.critical is critical
    # Nothing else a strict peer (rust) could find critical and unknown.
    assert len(local.certificate.extensions) == 1
    # go's validity: one hour back, about a century ahead.
    tlscert.verify_certificate(local.der, NOW - 3599)
    tlscert.verify_certificate(local.der, NOW + 99 * 365 * 86400)


def test_validity_window_is_checked() -> None:
    identity = PrivateKey.generate()
    local = tlscert.generate_certificate(identity, NOW, not_before=NOW - 10, not_after=NOW + 10)
    tlscert.verify_certificate(local.der, NOW)
    with pytest.raises(RemoteProtocolError, match="expired"):
        tlscert.verify_certificate(local.der, NOW + 11)
    with pytest.raises(RemoteProtocolError, match="not yet valid"):
        tlscert.verify_certificate(local.der, NOW - 11)


def test_signed_key_der() -> None:
    value = tlscert.encode_signed_key(b"k" * 200, b"s" * 64)
    assert value[:4] == bytes.fromhex("3082010d")  # long-form length, two octets
    assert tlscert.decode_signed_key(value) == (b"k" * 200, b"s" * 64)


@given(st.binary(max_size=600), st.binary(max_size=600))
def test_signed_key_round_trip(key: bytes, sig: bytes) -> None:
    assert tlscert.decode_signed_key(tlscert.encode_signed_key(key, sig)) == (key, sig)


@given(st.binary(max_size=300))
def test_signed_key_decoder_raises_only_protocol_errors(data: bytes) -> None:
    try:
        tlscert.decode_signed_key(data)
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize(
    "value",
    [
        b"",
        bytes.fromhex("3000"),  # no fields
        bytes.fromhex("30020400"),  # one field
        bytes.fromhex("3004040004000400"),  # three fields
        bytes.fromhex("300404000400") + b"\x00",  # trailing byte
        bytes.fromhex("3080040004000000"),  # indefinite length
        bytes.fromhex("3081040400040000"),  # non-minimal length
        bytes.fromhex("300403000400"),  # BIT STRING instead of OCTET STRING
        bytes.fromhex("30840000000404000400"),  # four length octets
        bytes.fromhex("3006040504000400"),  # inner length past the container
        bytes.fromhex("30ff"),  # length past the end
        bytes.fromhex("300404000400")[:-1],  # truncated
    ],
)
def test_signed_key_malformed(value: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        tlscert.decode_signed_key(value)


def test_signed_key_too_large() -> None:
    with pytest.raises(RemoteProtocolError, match="larger"):
        tlscert.decode_signed_key(tlscert.encode_signed_key(b"k" * 5000, b""))


# --- hostile certificates (B-06) -----------------------------------------------------------

_IDENTITY = PrivateKey.from_seed(b"\x42" * 32)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_cert(
    *,
    cert_key: CertificateIssuerPrivateKeyTypes | None = None,
    public_key: CertificatePublicKeyTypes | None = None,
    signed_key: bytes | None = None,
    signed_spki: bytes | None = None,
    identity: PrivateKey = _IDENTITY,
    extension: bool = True,
    critical: bool = False,
    extra: list[tuple[x509.ExtensionType, bool]] | None = None,
    issuer: str = "1",
    algorithm: hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
    version_1: bool = False,
) -> bytes:
    """A certificate with every knob a hostile peer could turn."""
    if cert_key is None:
        cert_key = ec.generate_private_key(ec.SECP256R1())
    pub = public_key if public_key is not None else cert_key.public_key()
    if signed_key is None:
        spki = signed_spki if signed_spki is not None else _spki(pub)
        sig = identity.sign(tlscert.SIGNATURE_PREFIX + spki)
        signed_key = tlscert.encode_signed_key(identity.public_key.to_protobuf(), sig)
    subject = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "1")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, issuer)]))
        .public_key(pub)
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.UTC))
    )
    if extension:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(tlscert.EXTENSION_OID, signed_key), critical=critical
        )
    for ext, crit in extra or []:
        builder = builder.add_extension(ext, critical=crit)
    if algorithm is None and not isinstance(cert_key, ed25519.Ed25519PrivateKey):
        algorithm = hashes.SHA256()
    cert = builder.sign(cert_key, algorithm)
    der = cert.public_bytes(serialization.Encoding.DER)
    if version_1:  # drop the [0] EXPLICIT version and patch the lengths (short certs only)
        assert der[:2] == b"\x30\x82" and der[4:6] == b"\x30\x82"
        tbs_len = int.from_bytes(der[6:8], "big") - 5
        assert der[8:13] == bytes.fromhex("a003020102")
        body = der[8 + 5 : 8 + 5 + tbs_len]
        rest = der[8 + 5 + tbs_len :]
        tbs = b"\x30\x82" + tbs_len.to_bytes(2, "big") + body
        der = b"\x30\x82" + (len(tbs) + len(rest)).to_bytes(2, "big") + tbs + rest
    return der


def test_hostile_baseline_is_accepted() -> None:
    key = tlscert.verify_certificate(make_cert(), NOW)
    assert PeerId.from_public_key(key) == _IDENTITY.peer_id


def test_two_certificates() -> None:
    with pytest.raises(RemoteProtocolError, match="exactly one"):
        tlscert.verify_certificate_chain([make_cert(), make_cert()], NOW)
    with pytest.raises(RemoteProtocolError, match="exactly one"):
        tlscert.verify_certificate_chain([], NOW)


def test_missing_extension() -> None:
    with pytest.raises(RemoteProtocolError, match="extension missing"):
        tlscert.verify_certificate(make_cert(extension=False), NOW)


def test_unknown_critical_extension() -> None:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00")
    with pytest.raises(RemoteProtocolError, match=r"unknown critical extension 1\.2\.3\.4\.5"):
        tlscert.verify_certificate(make_cert(extra=[(ext, True)]), NOW)
    # Non-critical unknown extensions MUST be ignored.
    tlscert.verify_certificate(make_cert(extra=[(ext, False)]), NOW)


def test_known_critical_extensions_are_accepted() -> None:
    extra: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            True,
        ),
    ]
    tlscert.verify_certificate(make_cert(extra=extra, critical=True), NOW)


def test_signature_over_wrong_key() -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(RemoteProtocolError, match="identity signature"):
        tlscert.verify_certificate(make_cert(signed_spki=_spki(other)), NOW)


def test_signature_without_prefix() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sig = _IDENTITY.sign(_spki(key.public_key()))
    signed = tlscert.encode_signed_key(_IDENTITY.public_key.to_protobuf(), sig)
    with pytest.raises(RemoteProtocolError, match="identity signature"):
        tlscert.verify_certificate(make_cert(cert_key=key, signed_key=signed), NOW)


def test_bad_self_signature() -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    claimed = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(RemoteProtocolError, match="self-signature"):
        tlscert.verify_certificate(make_cert(cert_key=signer, public_key=claimed), NOW)


def test_not_self_issued() -> None:
    with pytest.raises(RemoteProtocolError, match="self-signature"):
        tlscert.verify_certificate(make_cert(issuer="2"), NOW)


def test_unsupported_cert_key_types() -> None:
    dsa_key = dsa.generate_private_key(2048)
    with pytest.raises(RemoteProtocolError, match="certificate key"):
        tlscert.verify_certificate(make_cert(cert_key=dsa_key), NOW)
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(RemoteProtocolError, match="unsupported curve"):
        tlscert.verify_certificate(make_cert(cert_key=k1), NOW)


def test_ed25519_cert_key_is_accepted() -> None:
    tlscert.verify_certificate(make_cert(cert_key=ed25519.Ed25519PrivateKey.generate()), NOW)


def _big_rsa_public(bits: int) -> rsa.RSAPublicKey:
    n = (1 << (bits - 1)) | 0xF1  # odd, exactly ``bits`` long; no private key needed
    return rsa.RSAPublicNumbers(65537, n).public_key()


def test_oversized_rsa_cert_key_refused_before_signature_work() -> None:
    # Signed by an unrelated key: the size check must come first (CVE-2023-39533).
    der = make_cert(public_key=_big_rsa_public(16384))
    with pytest.raises(RemoteProtocolError, match="16384 bits is out of bounds"):
        tlscert.verify_certificate(der, NOW)


def test_undersized_rsa_cert_key() -> None:
    with pytest.raises(RemoteProtocolError, match="1024 bits is out of bounds"):
        tlscert.verify_certificate(make_cert(public_key=_big_rsa_public(1024)), NOW)


def test_oversized_rsa_identity_key() -> None:
    spki = _spki(_big_rsa_public(8200))
    protobuf = b"\x08\x00\x12" + bytes([0x80 | (len(spki) & 0x7F), len(spki) >> 7]) + spki
    signed = tlscert.encode_signed_key(protobuf, b"\x00" * 1152)
    with pytest.raises(RemoteProtocolError, match="8192"):
        tlscert.verify_certificate(make_cert(signed_key=signed), NOW)


def test_weak_signature_hash() -> None:
    with pytest.raises(RemoteProtocolError, match="SHA-256 or stronger"):
        tlscert.verify_certificate(make_cert(algorithm=hashes.SHA224()), NOW)


def test_malformed_identity_key_protobuf() -> None:
    signed = tlscert.encode_signed_key(b"\x08\x01\x12\x05short", b"\x00" * 64)
    with pytest.raises(RemoteProtocolError):
        tlscert.verify_certificate(make_cert(signed_key=signed), NOW)


def test_garbage_extension_value() -> None:
    with pytest.raises(RemoteProtocolError, match="SignedKey"):
        tlscert.verify_certificate(make_cert(signed_key=b"\x04\x00"), NOW)


def test_version_1_certificate() -> None:
    with pytest.raises(RemoteProtocolError):
        tlscert.verify_certificate(make_cert(version_1=True), NOW)


def test_non_positive_serial_is_refused() -> None:
    der = bytearray(make_cert())
    # serial_number(1) encodes as INTEGER 02 01 01 right after the version.
    pos = der.index(bytes.fromhex("a003020102020101"))
    der[pos + 7] = 0x00
    with pytest.raises(RemoteProtocolError, match="does not parse"):
        tlscert.verify_certificate(bytes(der), NOW)


def test_not_a_certificate() -> None:
    good = make_cert()
    for bad in (b"", b"\x30\x00", good[:-1], good[:50], b"\xff" * 100):
        with pytest.raises(RemoteProtocolError):
            tlscert.verify_certificate(bad, NOW)


def test_oversized_certificate() -> None:
    with pytest.raises(RemoteProtocolError, match="larger than"):
        tlscert.verify_certificate(b"\x30" * (tlscert.MAX_CERTIFICATE_SIZE + 1), NOW)


def test_vector_with_a_byte_flipped_anywhere_never_escapes_as_other_errors() -> None:
    der = bytearray(bytes.fromhex(VECTOR_ECDSA))
    for i in range(0, len(der), 3):
        der[i] ^= 0x41
        try:
            tlscert.verify_certificate(bytes(der), NOW)
        except RemoteProtocolError:
            pass
        der[i] ^= 0x41
