#!/usr/bin/env bash
# End-to-end demo on a freshly provisioned swtpm + SoftHSM token (state under $DEV, default
# target/demo, recreated on every run):
#   1. the daemon answers ping/status;
#   2. registration client: machine public key + MOSIP key index from the TPM, a packet signed and
#      verified with openssl, a request JWT signed and verified;
#   3. IDA: a partner-encrypted envelope (sealed by an independent Python implementation) opened in
#      the HSM; IDA's partner key certified by a MOSIP CA key in the HSM, the certificate exported
#      and verified with openssl, a datashare sealed to the certificate's thumbprint opened; the
#      key rotated, the old envelopes still opened, a new one sealed to the new version;
#   4. idOS: an issuer (Ed25519 key in the HSM) writes a credential sealed to the user's custody
#      X25519 key; the user grants access (re-encrypted to a consumer inside the daemon, content
#      hash returned and checked); the consumer opens it with PyNaCl; a wrong hash is refused;
#   5. MOSIP zero-knowledge pool: the credential service encrypts identity attributes under a pool
#      keyed by K9 and the person's UIN; IDA imports the pool key from MOSIP's share string
#      (addressed to its certified K22, re-wrapped under K18) and decrypts only with the right UIN;
#      the independent Python implementation decrypts the same bytes; K9 is rotated and the data
#      still decrypts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export DEV=${DEV:-$root/target/demo}
BIN=${BIN:-$root/target/debug}
"$root/scripts/dev.sh" stop >/dev/null 2>&1 || true
rm -rf "$DEV"
mkdir -p "$DEV/work"
W=$DEV/work
trap '"$root/scripts/dev.sh" stop >/dev/null 2>&1 || true' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "Provision swtpm + SoftHSM token and start custodyd"
eval "export $("$root/scripts/dev.sh" start | tail -n 1)"
echo "CUSTODY_SOCKET=$CUSTODY_SOCKET"
custody() { "$BIN/custody" "$@"; }

step "Daemon health"
run custody ping
run custody status

step "Registration client: the machine's TPM keys (MOSIP templates)"
run custody keys list
run custody --json keys public machine-sign --format tpmt
custody keys public machine-sign --format pem --out "$W/machine-sign.pem"
run cat "$W/machine-sign.pem"

step "Registration client: sign a packet with K10 in the TPM, verify with openssl"
head -c 4096 /dev/urandom > "$W/packet.zip"
run custody sign machine-sign --in "$W/packet.zip" --out "$W/packet.sig"
run openssl dgst -sha256 -verify "$W/machine-sign.pem" -signature "$W/packet.sig" "$W/packet.zip"

step "Registration client: sign a request JWT (kid = key index), verify with openssl"
printf '{"id":"mosip.registration.sync","version":"1.0","requesttime":"%s","request":{"machineName":"demo-machine"}}' \
  "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" > "$W/payload.json"
jwt=$(custody sign-jwt machine-sign --payload-file "$W/payload.json")
echo "$jwt"
b64url_decode() { local s; s=$(tr '_-' '/+' <<<"$1"); while [ $(( ${#s} % 4 )) -ne 0 ]; do s="$s="; done; base64 -d <<<"$s"; }
echo "header: $(b64url_decode "${jwt%%.*}")"
printf '%s' "${jwt%.*}" > "$W/jwt.input"
b64url_decode "${jwt##*.}" > "$W/jwt.sig"
run openssl dgst -sha256 -verify "$W/machine-sign.pem" -signature "$W/jwt.sig" "$W/jwt.input"

step "IDA: a partner seals a datashare to IDA's partner key (independent Python implementation)"
custody keys public ida-partner --format pem --out "$W/ida-partner-v1.pem"
echo '{"uin":"4342876513","name":"Demo Resident","dob":"1990/01/01"}' > "$W/datashare.json"
run python3 "$root/tests/interop/mosip_envelope.py" seal --pub "$W/ida-partner-v1.pem" \
  --in "$W/datashare.json" --out "$W/datashare.v1.env"
echo "envelope: $(wc -c < "$W/datashare.v1.env") bytes, starts with $(head -c 6 "$W/datashare.v1.env")"

step "IDA: open it with the private key in the HSM"
run custody envelope open ida-partner --in "$W/datashare.v1.env" --out "$W/opened.v1.json"
run cat "$W/opened.v1.json"
cmp "$W/datashare.json" "$W/opened.v1.json" && echo "plaintext matches"

step "Administrator: a MOSIP CA in the HSM certifies IDA's partner key (signed inside the HSM)"
run custody keys create mosip-ca --kind rsa2048-sign --backend pkcs11
run custody keys cert mosip-ca --self-signed --ca --subject "CN=MOSIP CA,O=MOSIP,C=IN" \
  --out "$W/mosip-ca.pem"
run custody keys cert ida-partner --issuer mosip-ca --subject "CN=IDA partner,O=MOSIP,C=IN" \
  --out "$W/ida-partner.cert.pem"
run custody keys cert-export ida-partner --chain --out "$W/ida-partner.chain.pem"
echo "exported chain: $(grep -c 'BEGIN CERTIFICATE' "$W/ida-partner.chain.pem") certificates"
run openssl verify -CAfile "$W/mosip-ca.pem" "$W/ida-partner.cert.pem"
run custody keys show ida-partner

step "IDA: a partner seals a datashare to IDA's certificate (thumbprint = SHA-256 of the DER certificate, as MOSIP does)"
run python3 "$root/tests/interop/mosip_envelope.py" seal --cert "$W/ida-partner.cert.pem" \
  --in "$W/datashare.json" --out "$W/datashare.cert.env"
run python3 "$root/tests/interop/mosip_envelope.py" thumbprint --in "$W/datashare.cert.env" \
  --cert "$W/ida-partner.cert.pem"
run custody envelope open ida-partner --in "$W/datashare.cert.env" --out "$W/opened.cert.json"
cmp "$W/datashare.json" "$W/opened.cert.json" && echo "plaintext matches"

step "Administrator: rotate IDA's partner key without a restart"
run custody keys rotate ida-partner

step "IDA: the old envelope still opens (version chosen by the thumbprint inside)"
run custody --json envelope open ida-partner --in "$W/datashare.v1.env"
custody envelope open ida-partner --in "$W/datashare.v1.env" | cmp - "$W/datashare.json" && echo "plaintext matches"

step "IDA: new envelopes go to version 2"
run custody envelope seal ida-partner --in "$W/datashare.json" --out "$W/datashare.v2.env"
run custody --json envelope open ida-partner --in "$W/datashare.v2.env"

step "idOS: keys in custody (user X25519 wrapped under an HSM master, issuer Ed25519 in the HSM)"
run custody keys create idos-master --kind aes256 --backend pkcs11 >/dev/null
run custody keys create idos-user --kind x25519 --backend software --master idos-master >/dev/null
run custody keys create idos-issuer --kind ed25519 --backend pkcs11 >/dev/null
user_pub=$(custody keys public idos-user); echo "user public key (base64): $user_pub"
issuer_pub=$(custody keys public idos-issuer); echo "issuer_auth_public_key (hex): $issuer_pub"

step "idOS: the issuer writes a credential sealed to the user, and signs it as idOS does"
echo '{"credentialSubject":{"id":"did:example:ada","kyc":"plus"}}' > "$W/credential.json"
printf '%s' '{"id":"cred-1","type":"KYC","level":"plus","issuer":"demo-issuer"}' > "$W/public_notes"
epk=$(custody box seal --to-pubkey "$user_pub" --in "$W/credential.json" --out "$W/content.b64")
echo "content: $(head -c 40 "$W/content.b64")…  encryptor_public_key: $epk"
custody sign idos-issuer --in "$W/public_notes" --out "$W/public_notes_signature"
base64 -d "$W/content.b64" > "$W/content.bin"
cat "$W/public_notes_signature" "$W/content.bin" > "$W/broader"
custody sign idos-issuer --in "$W/broader" --out "$W/broader_signature"
run python3 "$root/tests/interop/idos_nacl.py" verify --public "$issuer_pub" \
  --sig "$W/public_notes_signature" --in "$W/public_notes"
run python3 "$root/tests/interop/idos_nacl.py" verify --public "$issuer_pub" \
  --sig "$W/broader_signature" --in "$W/broader"
echo "both issuer signatures verify with PyNaCl's VerifyKey"

step "idOS: the user grants a consumer access: re-encrypted inside the daemon, hash checked"
consumer=$(python3 "$root/tests/interop/idos_nacl.py" keygen)
consumer_sk=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["secret"])' "$consumer")
consumer_pk=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["public"])' "$consumer")
hash=$(sha256sum "$W/credential.json" | cut -d' ' -f1)
echo "grant content_hash (SHA-256 of the credential, computed by the issuer): $hash"
run custody box reencrypt idos-user --encryptor-pubkey "$epk" --to-pubkey "$consumer_pk" \
  --in "$W/content.b64" --out "$W/granted.b64" --expect-sha256 "$hash" > "$W/grant.out"
cat "$W/grant.out"
grant_epk=$(sed -n 's/^encryptor_public_key //p' "$W/grant.out")

step "idOS: the consumer opens its copy with PyNaCl"
run python3 "$root/tests/interop/idos_nacl.py" open --secret "$consumer_sk" --encryptor "$grant_epk" \
  --in "$W/granted.b64" --out "$W/consumer.json"
run cat "$W/consumer.json"
cmp "$W/credential.json" "$W/consumer.json" && echo "plaintext matches"

step "idOS: a grant whose hash does not match the content is refused"
if custody box reencrypt idos-user --encryptor-pubkey "$epk" --to-pubkey "$consumer_pk" \
    --in "$W/content.b64" --out "$W/bad.b64" --expect-sha256 "$(printf x | sha256sum | cut -d' ' -f1)"; then
  echo "ERROR: a wrong content hash was accepted" >&2; exit 1
fi
[ ! -e "$W/bad.b64" ] && echo "refused (integrity); nothing written"

step "MOSIP ZK pool: the credential service's pool (10,000 keys under K9 in the HSM, shared to IDA's certified K22)"
run custody keys create k9 --kind aes256 --backend pkcs11 >/dev/null
run custody zk init cred-pool --master k9 --size 10000 --share-to ida-partner

step "MOSIP ZK pool: the credential service zero-knowledge-encrypts a resident's attributes"
uin=7390128546
printf '1990/01/01' > "$W/dob.txt"
custody --json zk encrypt cred-pool --id "$uin" --identifier dateOfBirth --in "$W/dob.txt" --out "$W/dob.attr" > "$W/zk.json"
index=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["index"])' "$W/zk.json")
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["share"])' "$W/zk.json" > "$W/share.txt"
echo "pool index (rankomKeyIndex): $index"
echo "share (encryptedRandomKey): $(head -c 60 "$W/share.txt")…"
echo "attribute (MOSIP wire, base64url): $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["attributes"][0]["value"][:60])' "$W/zk.json")…"

step "MOSIP ZK pool: IDA imports the pool key from the share (K22 decrypts, K18 re-wraps, never in clear)"
run custody keys create k18 --kind aes256 --backend pkcs11 >/dev/null
run custody zk init ida-pool --master k18 --size 0
run custody zk import ida-pool --with ida-partner --in "$W/share.txt" --index "$index"

step "MOSIP ZK pool: IDA decrypts with the UIN presented in the authentication request"
run custody zk decrypt ida-pool --id "$uin" --in "$W/dob.attr"; echo
if custody zk decrypt ida-pool --id 7390128547 --in "$W/dob.attr" 2>"$W/wrong-id.err"; then
  echo "ERROR: a wrong UIN decrypted" >&2; exit 1
fi
echo "another UIN: $(cat "$W/wrong-id.err")"

step "MOSIP ZK pool: the independent Python implementation reads the same bytes (pool key shared to a partner)"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$W/auditor.key" 2>/dev/null
openssl pkey -in "$W/auditor.key" -pubout -out "$W/auditor.pub"
custody zk share cred-pool --index "$index" --to-pem "$W/auditor.pub" --out "$W/auditor.share"
zkn=$(python3 "$root/tests/interop/mosip_zk.py" open-share --priv "$W/auditor.key" --share "$(cat "$W/auditor.share")")
run python3 "$root/tests/interop/mosip_zk.py" decrypt --key "$zkn" --id "$uin" --in "$W/dob.attr" --out "$W/dob.py"
cmp "$W/dob.txt" "$W/dob.py" && echo "Python decrypts the daemon's attribute: $(cat "$W/dob.py")"

step "MOSIP ZK pool: rotate K9 (MOSIP cannot) — every pool key re-wrapped, data still decrypts"
run custody zk rotate-master cred-pool
run custody zk decrypt cred-pool --id "$uin" --in "$W/dob.attr"; echo

step "Audit trail (last lines)"
tail -n 5 "$DEV/audit.log"

step "Done: demo passed"
