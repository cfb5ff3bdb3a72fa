#!/usr/bin/env python3
"""idOS's encryption with PyNaCl (libsodium), the independent implementation for custodyd's box
tests. Keys and content are standard base64 with padding, as idOS stores them.

  keygen                                   -> {"secret", "public"}
  seal --to PUB --in FILE                  -> {"content", "encryptor_public_key"}
      fresh ephemeral key pair, content = nonce(24) || box, as the idOS SDK does
  open --secret SK --encryptor PUB --in FILE(base64 content) --out FILE
      exit 3 with "CryptoError" when the box does not open
  derive --salt USER_ID  (password on stdin, one line)  -> {"secret", "public"}
      NFKC, UTF-8, scrypt N=16384 r=8 p=1 (hashlib), 32 bytes -> X25519 key
  verify --public HEX --sig FILE --in FILE
      exit 0 when FILE's pure Ed25519 signature verifies with nacl.signing.VerifyKey, else 4
"""
import argparse
import base64
import hashlib
import json
import sys
import unicodedata

import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils


def b64(b):
    return base64.b64encode(bytes(b)).decode()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("keygen")
    s = sub.add_parser("seal")
    s.add_argument("--to", required=True)
    s.add_argument("--in", dest="inp", required=True)
    o = sub.add_parser("open")
    o.add_argument("--secret", required=True)
    o.add_argument("--encryptor", required=True)
    o.add_argument("--in", dest="inp", required=True)
    o.add_argument("--out", required=True)
    d = sub.add_parser("derive")
    d.add_argument("--salt", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--public", required=True)
    v.add_argument("--sig", required=True)
    v.add_argument("--in", dest="inp", required=True)
    a = p.parse_args()

    if a.cmd == "keygen":
        sk = nacl.public.PrivateKey.generate()
        print(json.dumps({"secret": b64(bytes(sk)), "public": b64(bytes(sk.public_key))}))
    elif a.cmd == "seal":
        to = nacl.public.PublicKey(base64.b64decode(a.to, validate=True))
        eph = nacl.public.PrivateKey.generate()
        nonce = nacl.utils.random(nacl.public.Box.NONCE_SIZE)
        msg = open(a.inp, "rb").read()
        content = nacl.public.Box(eph, to).encrypt(msg, nonce)  # nonce || tag || ciphertext
        assert bytes(content)[:24] == nonce
        print(json.dumps({"content": b64(content), "encryptor_public_key": b64(eph.public_key)}))
    elif a.cmd == "open":
        sk = nacl.public.PrivateKey(base64.b64decode(a.secret, validate=True))
        epk = nacl.public.PublicKey(base64.b64decode(a.encryptor, validate=True))
        content = base64.b64decode(open(a.inp, "rb").read().strip(), validate=True)
        try:
            msg = nacl.public.Box(sk, epk).decrypt(content[24:], content[:24])
        except nacl.exceptions.CryptoError as e:
            print("CryptoError: %s" % e, file=sys.stderr)
            sys.exit(3)
        open(a.out, "wb").write(msg)
    elif a.cmd == "derive":
        password = sys.stdin.readline().rstrip("\n").rstrip("\r")
        secret = hashlib.scrypt(
            unicodedata.normalize("NFKC", password).encode("utf-8"),
            salt=a.salt.encode("utf-8"), n=16384, r=8, p=1, dklen=32, maxmem=64 * 1024 * 1024,
        )
        sk = nacl.public.PrivateKey(secret)
        print(json.dumps({"secret": b64(secret), "public": b64(sk.public_key)}))
    elif a.cmd == "verify":
        vk = nacl.signing.VerifyKey(bytes.fromhex(a.public))
        sig = open(a.sig, "rb").read()
        msg = open(a.inp, "rb").read()
        try:
            vk.verify(msg, sig)
        except nacl.exceptions.BadSignatureError:
            print("BadSignatureError", file=sys.stderr)
            sys.exit(4)


if __name__ == "__main__":
    main()
