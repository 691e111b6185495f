#!/usr/bin/env bash
# Makes the fuzz fixtures (a throw-away P-256 root, CA and signer certificate) and the seed
# corpora from real inputs: OpenSSL-made CSRs, CMS SignedData, OCSP requests, an ES256 JWS,
# the policies/*.toml files and sample JSON request bodies. The private keys live in a
# temporary folder and are deleted; only certificates and seeds are kept.
# Usage: fuzz/make-seeds.sh   (rewrites fuzz/fixtures and fuzz/corpus)
set -euo pipefail
cd "$(dirname "$0")"
FUZZ=$PWD
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
cat > ext.cnf <<'CNF'
[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
certificatePolicies = 1.3.6.1.4.1.32473.7373.1.1
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
certificatePolicies = 1.3.6.1.4.1.32473.7373.1.1
CNF
key root.key; key ca.key; key signer.key
openssl req -new -x509 -key root.key -subj "/C=CN/O=Fuzz/CN=Fuzz Root" -days 3650 -sha256 \
  -extensions root -config <(cat /usr/lib/ssl/openssl.cnf ext.cnf) -out root.pem
openssl req -new -key ca.key -subj "/C=CN/O=Fuzz/CN=Fuzz Customer CA" -out ca.csr
openssl x509 -req -in ca.csr -CA root.pem -CAkey root.key -CAcreateserial -days 3650 -sha256 \
  -extfile ext.cnf -extensions ca -out ca.pem 2>/dev/null
openssl req -new -key signer.key -subj "/C=CN/O=Fuzz/CN=Zhang San/serialNumber=110101199003071234" -out signer.csr
openssl x509 -req -in signer.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
  -extfile ext.cnf -extensions leaf -out signer.pem 2>/dev/null
mkdir -p "$FUZZ/fixtures"
for c in root ca signer; do openssl x509 -in $c.pem -outform DER -out "$FUZZ/fixtures/$c.der"; done

C="$FUZZ/corpus"
rm -rf "$C"; mkdir -p "$C"/{csr,cms_verify,jws_verify,ocsp_request,policy_toml,api_json}

# csr: "<vetted subject>\n<CSR PEM or DER>", as the RA gets them.
SUBJ='CN=张三,serialNumber=110101199003071234'
{ echo "$SUBJ"; cat signer.csr; } > "$C/csr/p256-pem"
{ echo "$SUBJ"; openssl req -in signer.csr -outform DER; } > "$C/csr/p256-der"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout /dev/null -subj "/CN=x" 2>/dev/null \
  | { echo "CN=x"; cat; } > "$C/csr/p384-pem"
openssl req -new -newkey rsa:1024 -nodes -keyout /dev/null -subj "/CN=x" -outform DER 2>/dev/null \
  | { echo "CN=x,serialNumber=1"; cat; } > "$C/csr/rsa1024-der"
openssl req -new -key signer.key -subj "/CN=x" -addext "subjectAltName=email:a@b.c" 2>/dev/null \
  | { echo "CN=a\\,b"; cat; } > "$C/csr/p256-with-extension"

# cms_verify: CMS over the fixed instruction (the fuzz target's INSTRUCTION).
printf '%s' '{"instruction_id":"P-1","amount":"100.00"}' > payment.json
S="openssl cms -sign -binary -md sha256 -in payment.json -signer signer.pem -inkey signer.key -certfile ca.pem"
$S -outform DER -out "$C/cms_verify/detached.der"
$S -nodetach -outform DER -out "$C/cms_verify/attached.der"
$S -noattr -outform DER -out "$C/cms_verify/detached-noattr.der"
$S -cades -outform PEM -out "$C/cms_verify/cades.pem"
openssl cms -sign -binary -md sha256 -in payment.json -signer signer.pem -inkey signer.key -nocerts \
  -outform DER -out "$C/cms_verify/nocerts.der"
$S -nodetach -stream -outform DER -out "$C/cms_verify/attached-ber.der"

# jws_verify: ES256 with x5c (compact and flattened JSON), over the same instruction.
python3 - "$C/jws_verify" <<'PY'
import base64, json, subprocess, sys
out = sys.argv[1]
b64u = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
der = lambda f: subprocess.run(["openssl", "x509", "-in", f, "-outform", "DER"], capture_output=True, check=True).stdout
def raw_sig(d):  # DER ECDSA-Sig-Value -> r||s (32+32)
    i = 2 if d[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        n = d[i + 1]; v = d[i + 2:i + 2 + n]; i += 2 + n
        out += v.lstrip(b"\0").rjust(32, b"\0")
    return out
payload = open("payment.json", "rb").read()
x5c = [base64.b64encode(der(f)).decode() for f in ("signer.pem", "ca.pem")]
for name, hdr in [("compact", {"alg": "ES256", "x5c": x5c}),
                  ("compact-iat", {"alg": "ES256", "x5c": x5c, "iat": 1800000000, "typ": "JOSE"})]:
    h = b64u(json.dumps(hdr, separators=(",", ":")).encode())
    si = (h + "." + b64u(payload)).encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", "signer.key"], input=si, capture_output=True, check=True).stdout
    s = b64u(raw_sig(sig))
    open(f"{out}/{name}", "w").write(si.decode() + "." + s)
    if name == "compact":
        open(f"{out}/flattened.json", "w").write(json.dumps({"protected": h, "payload": b64u(payload), "signature": s}))
        open(f"{out}/detached", "w").write(h + ".." + s)
PY

# ocsp_request: OpenSSL-made requests for the signer certificate.
openssl ocsp -issuer ca.pem -cert signer.pem -reqout "$C/ocsp_request/sha1-nonce.der" 2>/dev/null
openssl ocsp -issuer ca.pem -cert signer.pem -no_nonce -reqout "$C/ocsp_request/sha1-no-nonce.der" 2>/dev/null
openssl ocsp -issuer ca.pem -sha256 -cert signer.pem -reqout "$C/ocsp_request/sha256.der"
openssl ocsp -issuer ca.pem -cert signer.pem -issuer root.pem -cert ca.pem -reqout "$C/ocsp_request/two-certs.der"

# policy_toml: the shipped profiles and signature policy.
cp "$FUZZ"/../policies/*.toml "$C/policy_toml/"

# api_json: sample request bodies of the routes.
J="$C/api_json"
python3 - "$J" <<'PY'
import json, sys
d = sys.argv[1]
csr = open("signer.csr").read()
bodies = {
  "certificate": {"profile": "customer", "csr": csr, "subject": "CN=张三,serialNumber=110101199003071234"},
  "search": {"subject_serial": "110101199003071234"},
  "revoke": {"reason": "keyCompromise", "invalidity_date": "2026-11-01T00:00:00Z"},
  "verification": {"instruction": "eyJhIjoxfQ==", "signature": "MIIB", "receipt": True},
  "pin": {"activation_code": "ABCD-EFGH", "new_pin": "123456"},
  "signature": {"key": "k1", "format": "cms", "hashes": ["00" * 32], "pin": "123456"},
}
for name, body in bodies.items():
    open(f"{d}/{name}.json", "w").write(json.dumps(body, ensure_ascii=False))
PY
echo "seeds:"; find "$C" -type f | sort | xargs ls -l | awk '{print $5, $9}'
