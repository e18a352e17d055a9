"""A user's Hub token is sealed before it touches Redis, so Redis' AOF file on disk
holds only ciphertext that expires with the deployment's key.

The key is SUBNETSCOPE_SECRET_KEY, or a random one kept in <data_dir>/secret.key
(mode 0600), which every process of a deployment that shares the data directory
reads: the web app seals, the worker opens.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from app.core.settings import Settings

log = logging.getLogger(__name__)

KEY_FILE = "secret.key"


def _key_file(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def fernet(settings: Settings) -> Fernet:
    if settings.secret_key is not None:
        # Any passphrase works: it is stretched into a Fernet key.
        digest = hashlib.sha256(settings.secret_key.get_secret_value().encode()).digest()
        return Fernet(base64.urlsafe_b64encode(digest))
    return Fernet(_key_file(settings.data_dir))


def seal(settings: Settings, token: str) -> str:
    return fernet(settings).encrypt(token.encode()).decode()


def unseal(settings: Settings, sealed: str | None) -> str | None:
    """The token, or None when there is none or it was sealed with another key."""
    if not sealed:
        return None
    try:
        return fernet(settings).decrypt(sealed.encode()).decode()
    except InvalidToken:
        log.warning("a user's token could not be opened: web and worker must share "
                    "SUBNETSCOPE_SECRET_KEY (or the data directory); continuing without it")
        return None
