"""Google's OAuth 2.0 token endpoint, for service-account keys the emulator issued.

``service_account_key()`` makes a key file (a fresh RSA key) whose ``token_uri`` is the emulator's
``/token``, so that unmodified ``google-auth`` credentials from it (``google.auth.default()`` with
``GOOGLE_APPLICATION_CREDENTIALS``, ``service_account.Credentials``, ``IDTokenCredentials``,
``id_token.fetch_id_token``) mint tokens here: the JWT-bearer grant (RFC 7523) with the assertion signed
by that key, checked like Google checks it. An assertion with ``scope`` gets an access token (opaque);
one with ``target_audience`` gets an ID token, a JWT whose ``aud`` is that audience, which a function's
URL accepts. ID tokens are signed with HS256 and a secret of this emulator: they are only ever checked
here (google-auth reads their expiry without checking the signature).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_LIFETIME = 3600
#: Google accepts assertions valid for at most an hour, and this much clock skew.
MAX_ASSERTION_LIFETIME = 3600
CLOCK_SKEW = 300


class TokenError(Exception):
    """An OAuth error answer: ``{"error": code, "error_description": description}`` with HTTP 400."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def split_jwt(token: str) -> tuple[dict, dict, bytes, bytes]:
    """(header, claims, signed part, signature) of a compact JWT; ValueError if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (three dot-separated parts)")
    try:
        header = json.loads(_unb64url(parts[0]))
        claims = json.loads(_unb64url(parts[1]))
        signature = _unb64url(parts[2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT (header and claims must be JSON objects)")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), signature


@dataclass
class TokenIssuer:
    """The keys this emulator issued, and the tokens it minted with them."""

    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    public_keys: dict[str, object] = field(default_factory=dict)  # private_key_id -> RSA public key
    emails: dict[str, str] = field(default_factory=dict)  # private_key_id -> client_email
    access_tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (epoch seconds)

    def service_account_key(self, token_uri: str, project: str, email: str | None = None) -> dict:
        """A service-account key file (as JSON data) whose ``token_uri`` is this emulator's."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = uuid.uuid4().hex
        email = email or f"corral-emulator@{project}.iam.gserviceaccount.com"
        self.public_keys[key_id] = key.public_key()
        self.emails[key_id] = email
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "",
            "universe_domain": "googleapis.com",
        }

    # ---------------------------------------------------------------- the grant
    def grant(self, form: dict[str, str], token_path: str) -> dict:
        """The answer to a token request (``form``: the decoded body), or ``TokenError``."""
        grant_type = form.get("grant_type", "")
        if grant_type != JWT_BEARER:
            raise TokenError("unsupported_grant_type",
                             f"Invalid grant_type: {grant_type!r} (this emulator supports {JWT_BEARER} only)")
        assertion = form.get("assertion") or ""
        try:
            header, claims, signed, signature = split_jwt(assertion)
        except ValueError as exc:
            raise TokenError("invalid_request", f"Invalid assertion: {exc}") from None
        key = self.public_keys.get(str(header.get("kid", "")))
        if key is None or header.get("alg") != "RS256" or not _rs256_valid(key, signed, signature):
            raise TokenError("invalid_grant", "Invalid JWT Signature.")
        now = time.time()
        issued, expires = claims.get("iat"), claims.get("exp")
        if not isinstance(issued, (int, float)) or not isinstance(expires, (int, float)):
            raise TokenError("invalid_grant", "Invalid JWT: iat and exp are required.")
        if issued > now + CLOCK_SKEW or expires < now - CLOCK_SKEW or expires - issued > MAX_ASSERTION_LIFETIME:
            raise TokenError("invalid_grant",
                             "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                             "timeframe. Check your iat and exp values in the JWT claim.")
        audience = str(claims.get("aud", ""))
        if not audience.rstrip("/").endswith(token_path.rstrip("/")):
            raise TokenError("invalid_grant", f"Invalid JWT audience {audience!r}: it must be this token URI.")
        email = self.emails[str(header["kid"])]
        if claims.get("iss") != email:
            raise TokenError("invalid_grant", f"Invalid JWT: iss must be the key's client_email {email}.")
        target = claims.get("target_audience")
        if target:
            return {"id_token": self.id_token(str(target), email)}
        if not claims.get("scope"):
            raise TokenError("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = "ya29.corral-emulator." + secrets.token_urlsafe(32)
        self.access_tokens[token] = now + TOKEN_LIFETIME
        return {"access_token": token, "expires_in": TOKEN_LIFETIME - 1, "token_type": "Bearer"}

    # ---------------------------------------------------------------- ID tokens
    def id_token(self, audience: str, email: str, lifetime: int = TOKEN_LIFETIME) -> str:
        """An ID token for ``audience`` (a function's URL), as Google's token endpoint mints them."""
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": email,
            "email": email,
            "email_verified": True,
            "sub": str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16)),
            "iat": now,
            "exp": now + lifetime,
        }
        header = {"alg": "HS256", "typ": "JWT", "kid": "corral-emulator"}
        signed = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = hmac.new(self.secret, signed.encode(), hashlib.sha256).digest()
        return f"{signed}.{_b64url(signature)}"

    def check_id_token(self, token: str, audiences: set[str]) -> str | None:
        """None if ``token`` is an ID token of this emulator for one of ``audiences``, else the reason."""
        if token in self.access_tokens:
            return "an access token was sent; the function URL needs an ID token (target_audience = its URL)"
        try:
            header, claims, signed, signature = split_jwt(token)
        except ValueError as exc:
            return f"the bearer token is {exc}"
        expected = hmac.new(self.secret, signed, hashlib.sha256).digest()
        if header.get("alg") != "HS256" or not hmac.compare_digest(expected, signature):
            return "the ID token was not issued by this emulator's token endpoint"
        if float(claims.get("exp", 0)) < time.time():
            return "the ID token has expired"
        audience = str(claims.get("aud", "")).rstrip("/")
        if audience not in {a.rstrip("/") for a in audiences}:
            return f"the ID token's audience {audience!r} is not this function's URL"
        return None


def _rs256_valid(public_key, signed: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
