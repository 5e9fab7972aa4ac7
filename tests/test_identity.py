import base64
import hashlib
import hmac
import subprocess
import sys

import asyncssh

from hoopy.identity import Directory, Identity, ScramVerifier, hash_token, parse_ssh_key
from hoopy.policy.masking import BUILTIN, parse_detector, redact_text


def test_token_new_prints_a_token_and_matching_lines():
    r = subprocess.run([sys.executable, "-m", "hoopy", "token", "new"], capture_output=True, text=True, check=True)
    lines = dict(line.split(" = ", 1) for line in r.stdout.splitlines() if " = " in line)
    token = lines["token"]
    assert len(token) >= 40  # 256 bits, url-safe
    assert lines["token_sha256"].strip('"') == hashlib.sha256(token.encode()).hexdigest()
    v = ScramVerifier.parse(lines["token_scram"].strip('"'))
    assert v == ScramVerifier.make(token, salt=v.salt, iterations=v.iterations)
    r2 = subprocess.run([sys.executable, "-m", "hoopy", "token", "new"], capture_output=True, text=True, check=True)
    assert token not in r2.stdout


def test_scram_verifier_accepts_the_rfc7677_proof():
    # RFC 7677 section 3: user "user", password "pencil".
    v = ScramVerifier.make("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096)
    auth_message = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
                    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
                    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    signature = hmac.digest(v.stored_key, auth_message, "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, signature))
    assert hashlib.sha256(client_key).digest() == v.stored_key
    server_sig = hmac.digest(v.server_key, auth_message, "sha256")
    assert base64.b64encode(server_sig) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert ScramVerifier.parse(str(v)) == v


def test_tokens_compare_by_hash():
    a = Identity("a", "agent", frozenset(), (), hash_token("tok-a"), None)
    b = Identity("b", "human", frozenset({"reviewer"}), (), hash_token("tok-b"), None)
    d = Directory({"a": a, "b": b})
    assert d.by_token("tok-a") is a and d.by_token("tok-b") is b
    assert d.by_token("tok-c") is None and d.by_token("") is None
    assert d.authenticate_token("a", "tok-a") is a
    assert d.authenticate_token("a", "tok-b") is None
    assert d.authenticate_token("nobody", "tok-a") is None


def test_ssh_keys_match_by_blob_not_comment():
    k1 = asyncssh.generate_private_key("ssh-ed25519")
    k2 = asyncssh.generate_private_key("ssh-ed25519")
    line = k1.export_public_key().decode().strip()
    parsed = parse_ssh_key(" ".join(line.split()[:2]) + " some-other-comment")
    ident = Identity("a", "agent", frozenset(), (parsed,), None, None)
    assert ident.check_ssh_key("ssh-ed25519", k1.public_data)
    assert not ident.check_ssh_key("ssh-ed25519", k2.public_data)
    assert parsed.fingerprint == k1.get_fingerprint("sha256")


def test_detectors():
    text = "mail bob@example.com card 4111 1111 1111 1111 not 4111111111111112 ssn 123-45-6789 no 000-12-3456"
    out, counts = redact_text(text, [BUILTIN["email"], BUILTIN["credit_card"], BUILTIN["us_ssn"]])
    assert counts == {"email": 1, "credit_card": 1, "us_ssn": 1}
    assert "bob@" not in out and "4111 1111" not in out and "123-45" not in out
    assert "4111111111111112" in out and "000-12-3456" in out
    acct = parse_detector("regex:ACCT-[0-9]{8}")
    assert redact_text("x ACCT-12345678 y", [acct]) == ("x [REDACTED] y", {"regex:ACCT-[0-9]{8}": 1})
