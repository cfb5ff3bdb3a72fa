#!/usr/bin/env python3
"""An independent certificate authority (Python `cryptography`), for interoperability tests of
custodyd's certificates: a partner's CA that issues a certificate for a key custodyd holds, as
MOSIP's partner management re-signs a partner certificate.

Usage:
    x509_ca.py ca --key CA.key --cert CA.pem [--subject "CN=..."]
        a new RSA-2048 CA key and its self-signed certificate
    x509_ca.py issue --ca-key CA.key --ca-cert CA.pem --pub PUB.pem --out CERT.pem
                     [--subject "CN=..."] [--ca] [--expired]
        a certificate for PUB.pem (PEM SubjectPublicKeyInfo) signed by the CA
    x509_ca.py ec --out CERT.pem
        a self-signed P-256 certificate (not RSA: for refusal tests)
"""

import argparse
import datetime
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def name(text):
    attrs = []
    for part in text.split(","):
        k, v = part.split("=", 1)
        oid = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME,
               "C": NameOID.COUNTRY_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}[k.strip()]
        attrs.append(x509.NameAttribute(oid, v.strip()))
    return x509.Name(attrs)


def builder(subject, issuer, public_key, ca, expired):
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    else:
        start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=365)
    b = (x509.CertificateBuilder()
         .subject_name(subject).issuer_name(issuer).public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    return b


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("ca")
    c.add_argument("--key", required=True)
    c.add_argument("--cert", required=True)
    c.add_argument("--subject", default="CN=Partner CA,O=Partner,C=IN")
    i = sub.add_parser("issue")
    i.add_argument("--ca-key", required=True)
    i.add_argument("--ca-cert", required=True)
    i.add_argument("--pub", required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--subject", default="CN=IDA partner,O=MOSIP,C=IN")
    i.add_argument("--ca", action="store_true")
    i.add_argument("--expired", action="store_true")
    e = sub.add_parser("ec")
    e.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    if a.cmd == "ca":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = name(a.subject)
        cert = builder(subject, subject, key.public_key(), True, False).sign(key, hashes.SHA256())
        write(a.key, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        write(a.cert, cert.public_bytes(serialization.Encoding.PEM))
    elif a.cmd == "issue":
        with open(a.ca_key, "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), password=None)
        with open(a.ca_cert, "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
        with open(a.pub, "rb") as f:
            pub = serialization.load_pem_public_key(f.read())
        b = builder(name(a.subject), ca_cert.subject, pub, a.ca, a.expired).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False)
        write(a.out, b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = name("CN=not RSA")
        cert = builder(subject, subject, key.public_key(), False, False).sign(key, hashes.SHA256())
        write(a.out, cert.public_bytes(serialization.Encoding.PEM))
    return 0


if __name__ == "__main__":
    sys.exit(main())
