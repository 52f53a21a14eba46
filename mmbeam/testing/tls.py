"""A throwaway certificate for 127.0.0.1, so a :class:`~mmbeam.testing.FaultServer` can serve
``https://`` on loopback (``FaultServer(ssl_context=...)``).

Clients trust it through ``SSL_CERT_FILE`` (OpenSSL's default verify paths, which urllib3 and
aiohttp load), set to the returned file: the certificate is its own CA. Written here with
``cryptography`` (already installed with moto) because tests need one only for loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl

__all__ = ["loopback_tls"]


def loopback_tls(folder: str) -> tuple[ssl.SSLContext, str]:
    """``(server_context, ca_file)``: a server context for 127.0.0.1 and the PEM file a client
    must trust (both written under ``folder``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mmbeam loopback")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = os.path.join(folder, "loopback.pem"), os.path.join(folder, "loopback.key")
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file
