"""Request signatures (factory and device) and the key derivations of API.md.

Canonical string: "{timestamp}\\n{METHOD}\\n{path}\\n{sha256 hex of body}", signed with
HMAC-SHA256; the signature travels as lowercase hex in X-Signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ALIASES = str.maketrans({"I": "1", "L": "1", "O": "0"})
CLAIM_CODE_SYMBOLS = 10
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def is_canonical_signature(signature: str) -> bool:
    """Exactly 64 lowercase hex digits: one spelling per signature, nothing to strip."""
    return _SIGNATURE.fullmatch(signature) is not None


def canonical_string(timestamp: str, method: str, path: str, body: bytes) -> bytes:
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{timestamp}\n{method.upper()}\n{path}\n{body_hash}".encode()


def sign(key: bytes, timestamp: str, method: str, path: str, body: bytes) -> str:
    return hmac.new(
        key, canonical_string(timestamp, method, path, body), hashlib.sha256
    ).hexdigest()


def signature_matches(
    key: bytes, signature: str, timestamp: str, method: str, path: str, body: bytes
) -> bool:
    if not is_canonical_signature(signature):
        return False
    expected = sign(key, timestamp, method, path, body)
    return hmac.compare_digest(expected, signature)


def device_key(manufacturing_key: str, device_id: str) -> bytes:
    """The device's own 32-byte key: HMAC-SHA256(K, "device:" + device_id)."""
    return hmac.new(
        manufacturing_key.encode(), f"device:{device_id}".encode(), hashlib.sha256
    ).digest()


def encode_device_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def decode_device_key(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def crockford_base32(data: bytes, symbols: int) -> str:
    """The first `symbols` symbols, 5 bits each, most significant bits of `data` first."""
    value = int.from_bytes(data, "big")
    total_bits = len(data) * 8
    out = []
    for i in range(symbols):
        shift = total_bits - 5 * (i + 1)
        out.append(CROCKFORD[(value >> shift) & 0x1F])
    return "".join(out)


def claim_code(manufacturing_key: str, serial_number: str) -> str:
    """Printed on the device as two groups of five symbols, e.g. 7K3QD-W9M2A."""
    digest = hmac.new(
        manufacturing_key.encode(), f"claim:{serial_number}".encode(), hashlib.sha256
    ).digest()
    code = crockford_base32(digest, CLAIM_CODE_SYMBOLS)
    return f"{code[:5]}-{code[5:]}"


def normalise_claim_code(text: str) -> str:
    """Case, hyphens, spaces and Crockford's aliases (I, L -> 1; O -> 0) do not matter."""
    return text.upper().replace("-", "").replace(" ", "").translate(_ALIASES)


def claim_code_matches(manufacturing_key: str, serial_number: str, presented: str) -> bool:
    expected = normalise_claim_code(claim_code(manufacturing_key, serial_number))
    return hmac.compare_digest(expected.encode(), normalise_claim_code(presented).encode())
