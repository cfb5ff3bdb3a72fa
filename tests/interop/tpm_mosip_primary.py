#!/usr/bin/env python3
"""Recreate a MOSIP registration-client TPM primary with raw TPM 2.0 commands (stdlib only).

Builds MOSIP's TPMT_PUBLIC template from the TPM 2.0 structure definitions (Part 2), sends
TPM2_CreatePrimary (endorsement hierarchy, password session with empty auth) over swtpm's TCP data
port (raw command bytes), prints the returned outPublic TPMT_PUBLIC as hex on stdout and flushes the
object with TPM2_FlushContext.

Usage: tpm_mosip_primary.py PORT sign|encrypt [--template]
  --template  print the template bytes sent instead of the TPM's answer (nothing is sent)
"""
import socket
import struct
import sys

# TPM 2.0 Part 2 constants
TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002
TPM_CC_CREATE_PRIMARY = 0x00000131
TPM_CC_FLUSH_CONTEXT = 0x00000165
TPM_RH_ENDORSEMENT = 0x4000000B
TPM_RS_PW = 0x40000009
TPM_ALG_RSA = 0x0001
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_NULL = 0x0010
TPM_ALG_RSASSA = 0x0014
TPM_ALG_OAEP = 0x0017

# TPMA_OBJECT bits
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
USER_WITH_AUTH = 1 << 6
DECRYPT = 1 << 17
SIGN_ENCRYPT = 1 << 18

EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


def u8(v):
    return struct.pack(">B", v)


def u16(v):
    return struct.pack(">H", v)


def u32(v):
    return struct.pack(">I", v)


def tpm2b(data):
    return u16(len(data)) + data


def mosip_template(which):
    """TPMT_PUBLIC of MOSIP's signing or encryption key."""
    common = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH
    if which == "sign":
        name_alg, attrs, policy = TPM_ALG_SHA1, common | SIGN_ENCRYPT, b""
        scheme = u16(TPM_ALG_RSASSA) + u16(TPM_ALG_SHA256)  # TPMT_RSA_SCHEME
    elif which == "encrypt":
        name_alg, attrs, policy = TPM_ALG_SHA256, common | DECRYPT, EK_POLICY
        scheme = u16(TPM_ALG_OAEP) + u16(TPM_ALG_SHA256)
    else:
        raise SystemExit("key must be sign or encrypt")
    rsa_parms = (
        u16(TPM_ALG_NULL)  # TPMT_SYM_DEF_OBJECT: algorithm NULL, no keyBits/mode
        + scheme
        + u16(2048)  # keyBits
        + u32(65537)  # exponent, written explicitly as MOSIP does
    )
    return (
        u16(TPM_ALG_RSA)  # type
        + u16(name_alg)  # nameAlg
        + u32(attrs)  # objectAttributes
        + tpm2b(policy)  # authPolicy
        + rsa_parms  # parameters.rsaDetail
        + tpm2b(b"")  # unique.rsa: empty
    )


def command(tag, cc, body):
    return u16(tag) + u32(10 + len(body)) + u32(cc) + body


def transact(port, cmd):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(cmd)
        head = b""
        while len(head) < 10:
            chunk = s.recv(10 - len(head))
            if not chunk:
                raise SystemExit("TPM closed the connection")
            head += chunk
        tag, size, rc = struct.unpack(">HII", head)
        rest = b""
        while len(rest) < size - 10:
            chunk = s.recv(size - 10 - len(rest))
            if not chunk:
                raise SystemExit("short TPM response")
            rest += chunk
    if rc != 0:
        raise SystemExit("TPM returned rc 0x%x" % rc)
    return tag, rest


def create_primary(port, template):
    pw_session = u32(TPM_RS_PW) + tpm2b(b"") + u8(0) + tpm2b(b"")  # TPMS_AUTH_COMMAND
    sensitive = tpm2b(tpm2b(b"") + tpm2b(b""))  # TPM2B_SENSITIVE_CREATE {userAuth, data}
    body = (
        u32(TPM_RH_ENDORSEMENT)
        + u32(len(pw_session))
        + pw_session
        + sensitive
        + tpm2b(template)  # inPublic
        + tpm2b(b"")  # outsideInfo
        + u32(0)  # creationPCR: TPML_PCR_SELECTION count 0
    )
    _, rest = transact(port, command(TPM_ST_SESSIONS, TPM_CC_CREATE_PRIMARY, body))
    handle = struct.unpack(">I", rest[0:4])[0]
    # rest[4:8] = parameterSize; then outPublic (TPM2B_PUBLIC)
    (pub_size,) = struct.unpack(">H", rest[8:10])
    return handle, rest[10 : 10 + pub_size]


def flush(port, handle):
    transact(port, command(TPM_ST_NO_SESSIONS, TPM_CC_FLUSH_CONTEXT, u32(handle)))


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    port, which = int(sys.argv[1]), sys.argv[2]
    template = mosip_template(which)
    if "--template" in sys.argv[3:]:
        print(template.hex())
        return
    handle, out_public = create_primary(port, template)
    try:
        print(out_public.hex())
    finally:
        flush(port, handle)


if __name__ == "__main__":
    main()
