"""The API keys `glimp serve` admits: one (`--api-key`, `GLIMP_API_KEY`) or a file of them
(`--api-key-file`: a key per line, optionally followed by a space and a name for logs and
metrics; `#` starts a comment), read again on SIGHUP without dropping runs.  A key is compared in
constant time and never shown: logs and metrics carry its name (`key-N`, its line, when unnamed)."""

from __future__ import annotations

import hmac
import threading
from pathlib import Path

from glimp_integrations.errors import invalid


class KeyRing:
    """The keys a server admits, by name; `reload()` reads the file again (SIGHUP)."""

    def __init__(self, api_key: str | None = None, api_key_file: str | Path | None = None) -> None:
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise invalid(
                "api_key", "<hidden>", "must be a non-empty string", "Pass the key clients will send, or None."
            )
        self.file = Path(api_key_file) if api_key_file is not None else None
        self._given = {api_key: "api-key"} if api_key else {}
        self._lock = threading.Lock()
        self._keys: dict[bytes, str] = {}
        self.reload()

    def reload(self) -> None:
        """Read the key file again (the `--api-key` stays); a file that cannot be read keeps the
        keys in use and raises."""
        keys = dict(self._given)
        if self.file is not None:
            keys.update(read_key_file(self.file))
        with self._lock:
            self._keys = {key.encode(): name for key, name in keys.items()}

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def name_of(self, authorization: str) -> str | None:
        """The name of the key an `Authorization: Bearer <key>` header carries, or None."""
        given = authorization.removeprefix("Bearer ").encode() if authorization.startswith("Bearer ") else b""
        with self._lock:
            keys = list(self._keys.items())
        found = None
        for key, name in keys:  # every key compared, in constant time each
            if hmac.compare_digest(given, key):
                found = name
        return found


def read_key_file(path: Path) -> dict[str, str]:
    """{key: name} from a key file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise invalid(
            "api_key_file", str(path), f"cannot be read ({error.strerror})", "Pass a readable file."
        ) from error
    keys: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, name = line.partition(" ")
        keys[key] = name.strip() or f"key-{number}"
    if not keys:
        raise invalid("api_key_file", str(path), "holds no key", "Write one key per line (a name may follow it).")
    return keys
