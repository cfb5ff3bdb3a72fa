#!/usr/bin/env python3
"""Independent implementation of MOSIP's keymanager hybrid envelope (versioned form VER_R2).

Written from reference/mosip.md, for interoperability tests against custodyd's Rust code:

    "VER_R2"(6) || thumbprint(32) || RSA-OAEP(aes_key)(256) || "#KEY_SPLITTER#"(14)
        || aad(32 random) || ciphertext || tag(16)

- data: AES-256-GCM, 128-bit tag, fresh random key per message;
- GCM nonce = first 12 bytes of aad, GCM AAD = all 32 aad bytes;
- key: RSA-OAEP, SHA-256, MGF1-SHA-256, empty label;
- thumbprint of a bare public key: SHA-256 over its DER SubjectPublicKeyInfo; of a certified
  recipient (MOSIP's rule): SHA-256 over the DER certificate;
- wire form: base64url without padding (padded / standard base64 accepted on input).

Usage:
    mosip_envelope.py seal (--pub PUB.pem | --cert CERT.pem) --in FILE --out FILE [--base64]
    mosip_envelope.py open --key PRIV.pem [--cert CERT.pem]... --in FILE --out FILE [--base64]
    mosip_envelope.py thumbprint --in FILE [--cert CERT.pem] [--base64]
"""

import argparse
import base64
import binascii
import hashlib
import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"VER_R2"
SPLITTER = b"#KEY_SPLITTER#"
THUMB_LEN = 32
WRAPPED_LEN = 256
AAD_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16


class EnvelopeError(Exception):
    pass


def oaep():
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()),
        algorithm=hashes.SHA256(),
        label=None,
    )


def spki_thumbprint(public_key):
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64_decode(text):
    text = text.strip()  # tolerate a trailing newline from files/shells
    if b"+" in text or b"/" in text:
        text = text.replace(b"+", b"-").replace(b"/", b"_")
    if not text.endswith(b"="):
        text += b"=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise EnvelopeError("invalid base64") from e


def cert_thumbprint(cert):
    """MOSIP's thumbprint of a certified recipient: SHA-256 over the DER certificate."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(cert.public_bytes(serialization.Encoding.DER))
    return digest.finalize()


def seal(public_key, plaintext, thumbprint=None):
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size != 2048:
        raise EnvelopeError("recipient must be an RSA-2048 public key")
    aes_key = AESGCM.generate_key(bit_length=256)
    aad = os.urandom(AAD_LEN)
    body = AESGCM(aes_key).encrypt(aad[:NONCE_LEN], plaintext, aad)  # ciphertext || tag
    wrapped = public_key.encrypt(aes_key, oaep())
    if len(wrapped) != WRAPPED_LEN:
        raise EnvelopeError("wrapped key is not 256 bytes")
    thumb = thumbprint if thumbprint is not None else spki_thumbprint(public_key)
    return VERSION + thumb + wrapped + SPLITTER + aad + body


def open_envelope(private_key, envelope, accepted=()):
    if not envelope.startswith(VERSION):
        raise EnvelopeError("not a VER_R2 envelope")
    rest = envelope[len(VERSION):]
    if len(rest) < THUMB_LEN:
        raise EnvelopeError("truncated thumbprint")
    thumb, rest = rest[:THUMB_LEN], rest[THUMB_LEN:]
    idx = rest.find(SPLITTER)
    if idx < 0:
        raise EnvelopeError("no key splitter")
    # The wrapped key is exactly 256 bytes; a splitter found earlier means a malformed envelope
    # unless the right position also holds it (the random wrapped key may contain the text).
    if rest[WRAPPED_LEN:WRAPPED_LEN + len(SPLITTER)] != SPLITTER:
        raise EnvelopeError("wrapped key is %d bytes, expected 256" % idx)
    wrapped = rest[:WRAPPED_LEN]
    rest = rest[WRAPPED_LEN + len(SPLITTER):]
    if len(rest) < AAD_LEN + TAG_LEN:
        raise EnvelopeError("truncated aad/body")
    aad, body = rest[:AAD_LEN], rest[AAD_LEN:]

    if thumb != spki_thumbprint(private_key.public_key()) and thumb not in accepted:
        raise EnvelopeError("thumbprint does not match the private key")
    aes_key = private_key.decrypt(wrapped, oaep())
    if len(aes_key) != 32:
        raise EnvelopeError("data key is not 32 bytes")
    try:
        return AESGCM(aes_key).decrypt(aad[:NONCE_LEN], body, aad)
    except InvalidTag as e:
        raise EnvelopeError("integrity check failed") from e


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seal", help="seal a file to a public key")
    s.add_argument("--pub", help="recipient RSA-2048 public key (PEM SPKI)")
    s.add_argument("--cert", help="recipient certificate (PEM): the thumbprint is the "
                   "certificate's, MOSIP's rule")
    o = sub.add_parser("open", help="open an envelope with a private key")
    o.add_argument("--key", required=True, help="RSA private key (PEM)")
    o.add_argument("--cert", action="append", default=[],
                   help="also accept this certificate's thumbprint (PEM; repeatable)")
    t = sub.add_parser("thumbprint", help="print the thumbprint an envelope carries, and the "
                       "thumbprint of a certificate (hex)")
    t.add_argument("--cert", help="certificate (PEM) whose thumbprint to print as well")
    t.add_argument("--in", dest="infile", required=True)
    t.add_argument("--base64", action="store_true")
    for p in (s, o):
        p.add_argument("--in", dest="infile", required=True)
        p.add_argument("--out", dest="outfile", required=True)
        p.add_argument("--base64", action="store_true",
                       help="envelope as base64url without padding")
    args = ap.parse_args(argv)

    with open(args.infile, "rb") as f:
        data = f.read()
    def load_cert(path):
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())

    try:
        if args.cmd == "thumbprint":
            if args.base64:
                data = b64_decode(data)
            if not data.startswith(VERSION) or len(data) < len(VERSION) + THUMB_LEN:
                raise EnvelopeError("not a VER_R2 envelope")
            print("envelope %s" % data[len(VERSION):len(VERSION) + THUMB_LEN].hex())
            if args.cert:
                print("certificate %s" % cert_thumbprint(load_cert(args.cert)).hex())
            return 0
        if args.cmd == "seal":
            if (args.pub is None) == (args.cert is None):
                raise EnvelopeError("give exactly one of --pub and --cert")
            if args.cert:
                cert = load_cert(args.cert)
                out = seal(cert.public_key(), data, cert_thumbprint(cert))
            else:
                with open(args.pub, "rb") as f:
                    pub = serialization.load_pem_public_key(f.read())
                out = seal(pub, data)
            if args.base64:
                out = b64url_encode(out)
        else:
            with open(args.key, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
            if args.base64:
                data = b64_decode(data)
            accepted = [cert_thumbprint(load_cert(c)) for c in args.cert]
            out = open_envelope(key, data, accepted)
    except EnvelopeError as e:
        print("mosip_envelope: %s" % e, file=sys.stderr)
        return 1
    with open(args.outfile, "wb") as f:
        f.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
