#!/usr/bin/env python3
"""Independent implementation of MOSIP's zero-knowledge encryption, for interoperability tests
against custodyd. Written from reference/mosip.md ("Zero-knowledge encryption"):

- derived key ZKn' = AES-256-ECB(key=ZKn, data=SHA-256(utf8 id)) (two 16-byte blocks);
- attribute = index(4, big-endian) || nonce(12) || aad(32) || AES-256-GCM(ZKn', nonce, aad, value)
  || tag(16), base64url without padding on MOSIP's wire;
- share segment = base64url(thumbprint(32) || RSA-OAEP-SHA256(ZKn)), segments joined with '.';
  thumbprint = SHA-256 of the recipient's DER certificate (or of its DER SubjectPublicKeyInfo);
- pool export (data_encrypt_keystore) = CSV `id,key`, key = base64(AES-ECB-nopad(K9, ZKn)).

Usage:
    mosip_zk.py encrypt --key HEX --id ID --index N --in FILE --out FILE [--text]
    mosip_zk.py decrypt --key HEX --id ID --in FILE --out FILE
    mosip_zk.py share --key HEX (--pub PUB.pem | --cert CERT.pem)...      (prints the share string)
    mosip_zk.py open-share --priv PRIV.pem [--cert CERT.pem] --share TEXT  (prints ZKn as hex)
    mosip_zk.py export --master HEX --pool FILE                            (FILE: lines `index hexkey`)
"""

import argparse
import base64
import hashlib
import os
import sys

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64url(s):
    s = s.strip()
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def ecb_encrypt(key, data):
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(data) + e.finalize()


def derive(zkn, ident):
    return ecb_encrypt(zkn, hashlib.sha256(ident.encode("utf-8")).digest())


def oaep():
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def read_attr(path):
    raw = open(path, "rb").read()
    try:
        text = raw.decode("ascii").strip()
        if text and all(c.isalnum() or c in "-_" for c in text):
            return unb64url(text)
    except UnicodeDecodeError:
        pass
    return raw


def cmd_encrypt(a):
    zkn = bytes.fromhex(a.key)
    value = open(a.in_, "rb").read()
    nonce, aad = os.urandom(12), os.urandom(32)
    ct = AESGCM(derive(zkn, a.id)).encrypt(nonce, value, aad)
    out = a.index.to_bytes(4, "big") + nonce + aad + ct
    with open(a.out, "wb") as f:
        f.write(b64url(out).encode() if a.text else out)


def cmd_decrypt(a):
    zkn = bytes.fromhex(a.key)
    attr = read_attr(a.in_)
    nonce, aad, ct = attr[4:16], attr[16:48], attr[48:]
    try:
        value = AESGCM(derive(zkn, a.id)).decrypt(nonce, ct, aad)
    except InvalidTag:
        print("integrity: wrong id, key or data", file=sys.stderr)
        sys.exit(3)
    with open(a.out, "wb") as f:
        f.write(value)


def recipient(path, is_cert):
    data = open(path, "rb").read()
    if is_cert:
        cert = x509.load_pem_x509_certificate(data)
        return cert.public_key(), hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    pub = serialization.load_pem_public_key(data)
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pub, hashlib.sha256(spki).digest()


def cmd_share(a):
    zkn = bytes.fromhex(a.key)
    recips = [recipient(p, False) for p in a.pub or []] + [recipient(p, True) for p in a.cert or []]
    print(".".join(b64url(t + pub.encrypt(zkn, oaep())) for pub, t in recips))


def cmd_open_share(a):
    priv = serialization.load_pem_private_key(open(a.priv, "rb").read(), password=None)
    pub = priv.public_key()
    if a.cert:
        cert = x509.load_pem_x509_certificate(open(a.cert, "rb").read())
        mine = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    else:
        spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        mine = hashlib.sha256(spki).digest()
    for seg in a.share.strip().split("."):
        raw = unb64url(seg)
        if len(raw) != 32 + 256:
            print("malformed segment", file=sys.stderr)
            sys.exit(2)
        if raw[:32] == mine:
            print(priv.decrypt(raw[32:], oaep()).hex())
            return
    print("no segment for this key", file=sys.stderr)
    sys.exit(4)


def cmd_export(a):
    master = bytes.fromhex(a.master)
    print("id,key")
    for line in open(a.pool):
        if not line.strip():
            continue
        idx, key = line.split()
        print(f"{int(idx)},{base64.b64encode(ecb_encrypt(master, bytes.fromhex(key))).decode()}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encrypt")
    e.add_argument("--key", required=True)
    e.add_argument("--id", required=True)
    e.add_argument("--index", type=int, required=True)
    e.add_argument("--in", dest="in_", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--text", action="store_true")
    d = sub.add_parser("decrypt")
    d.add_argument("--key", required=True)
    d.add_argument("--id", required=True)
    d.add_argument("--in", dest="in_", required=True)
    d.add_argument("--out", required=True)
    s = sub.add_parser("share")
    s.add_argument("--key", required=True)
    s.add_argument("--pub", action="append")
    s.add_argument("--cert", action="append")
    o = sub.add_parser("open-share")
    o.add_argument("--priv", required=True)
    o.add_argument("--cert")
    o.add_argument("--share", required=True)
    x = sub.add_parser("export")
    x.add_argument("--master", required=True)
    x.add_argument("--pool", required=True)
    a = p.parse_args()
    {"encrypt": cmd_encrypt, "decrypt": cmd_decrypt, "share": cmd_share,
     "open-share": cmd_open_share, "export": cmd_export}[a.cmd](a)


if __name__ == "__main__":
    main()
