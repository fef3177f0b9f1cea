"""The user directory: who may log in, with which number, name and password.

Sources, looked up in this order:

1. the `[[users]]` table of the configuration file;
2. `[directory] users_file`: a TOML (`[[users]]` tables) or CSV file
   (`username,password,number,display_name[,ha1_md5][,ha1_sha256]`), reloaded when it
   changes. The file is
   checked at most every `reload_interval` seconds, on lookup (and by `watch()` when
   that task runs). A file that fails to load on reload leaves the previous directory in
   place and logs one error line naming the file and the line or key;
3. `[directory.ldap]`: an LDAP server (the optional `ldap3` library). Users are found
   with `user_filter`; a password is checked by binding as the user's DN. Results are
   cached for `cache_ttl` seconds.

Local users (the first two sources) have a password, stored HA1 values
(`ha1_md5`/`ha1_sha256` = H(number ":" SIP realm ":" password), see
`gateway.config.user_ha1`), or both. `sip_secret(number)` is what the built-in registrar
and INVITE digest check (the digest user name is the number, the realm the SIP realm);
`web_credentials(username)` is what web logins check (gateway/auth.py): a typed password
is hashed the same way and compared with the stored HA1 when no password is stored.

Use `Directory.from_config(config)`. The lookups are synchronous; with LDAP configured
they may wait on the network (up to the configured timeout), so coroutines should use
the `a*` variants (`await directory.aby_number(n)`, ...), which run LDAP lookups in a
worker thread and answer local users directly.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.auth import StoredCredentials
from gateway.config import (
    HA1_KEYS,
    Config,
    ConfigError,
    LdapConfig,
    User,
    parse_users_file,
    sip_realm,
    user_ha1,
)
from sip.auth_server import Secret

__all__ = ["Directory", "LdapSource"]

logger = logging.getLogger(__name__)

_NUMBER_RE = re.compile(r"\+?[0-9]+")
_NUMBER_JUNK_RE = re.compile(r"[\s().\-/]")


def _passwords_equal(given: str, stored: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), stored.encode("utf-8"))


def password_matches(user: User, password: str, realm: str | None) -> bool:
    """True when `password` is `user`'s: compared with the stored password, or else
    hashed as H(number:realm:password) and compared with a stored HA1 (SHA-256 when
    stored, else MD5), in constant time. `realm` is the SIP realm (None: unknown, so an
    HA1-only user cannot be checked). An empty password is never right."""
    if not password:
        return False
    if user.password:
        return _passwords_equal(password, user.password)
    if realm is None:
        return False
    for key in ("ha1_sha256", "ha1_md5"):
        stored = getattr(user, key)
        if stored is not None:
            computed = user_ha1(HA1_KEYS[key][0], user.number, realm, password)
            return hmac.compare_digest(computed, stored)
    return False


class Directory:
    """Users by number and by username, and password checks, over all sources."""

    def __init__(
        self,
        users: Iterable[User] = (),
        *,
        users_file: str | None = None,
        reload_interval: float = 2.0,
        ldap: LdapConfig | LdapSource | None = None,
        reserved_numbers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        realm: str | None = None,
    ) -> None:
        """`users`: the [[users]] table. `users_file` is read now (raises `ConfigError`
        when it is bad: at start-up that is a configuration error). `reserved_numbers`
        maps numbers no file user may take (the test numbers) to a description.
        `realm`: the SIP digest realm that stored HA1 values hash (`config.sip_realm`);
        None leaves HA1-only users without web password logins."""
        self._table = tuple(users)
        self.realm = realm
        self._users_file = users_file
        self._reload_interval = reload_interval
        self._reserved = dict(reserved_numbers or {})
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._signature: tuple[int, int, int] | None = None
        self._bad_signature: object = None
        self.reloads = 0  # successful reloads of the users file since start
        self.reload_errors = 0
        file_users: tuple[User, ...] = ()
        if users_file is not None:
            self._signature = self._stat()
            file_users = self._load_file()
            self._next_check = clock() + reload_interval
        self._set_local(file_users)
        if isinstance(ldap, LdapConfig):
            ldap = LdapSource(ldap)
        self.ldap: LdapSource | None = ldap

    @classmethod
    def from_config(cls, config: Config) -> Directory:
        """The directory of a loaded configuration (the users file is read again)."""
        d = config.directory
        file_users = set(d.file_users)
        table = [u for u in config.users if u not in file_users]
        reserved = {
            n: f"[numbers] {key}"
            for key, n in (("echo", config.numbers.echo), ("tone", config.numbers.tone))
            if n
        }
        directory = cls(
            table,
            users_file=d.users_file,
            reload_interval=d.reload_interval,
            ldap=d.ldap,
            reserved_numbers=reserved,
            realm=sip_realm(config.sip),
        )
        directory.warn_about_ha1(config)
        return directory

    def warn_about_ha1(self, config: Config) -> list[str]:
        """Log (and return) one warning line per way the stored HA1 values of local users
        limit them under `config`; nothing when no user is HA1-only."""
        ha1_only = [u for u in self._by_username.values() if u.ha1_only]
        if not ha1_only:
            return []
        realm = sip_realm(config.sip)
        warnings: list[str] = []

        def names(users: list[User]) -> str:
            shown = ", ".join(u.username for u in users[:10])
            more = f" and {len(users) - 10} more" if len(users) > 10 else ""
            return ("user " if len(users) == 1 else "users ") + shown + more

        if not config.sip.realm:
            warnings.append(
                f"{names(ha1_only)}: only HA1 values stored, which hash the SIP realm: "
                f"[sip] realm is not set, so it is the SIP listen host {realm!r}; set [sip] "
                f"realm so that the values survive a change of the listen address"
            )
        sha_only = [u for u in ha1_only if u.ha1_md5 is None]
        if sha_only:
            warnings.append(
                f"{names(sha_only)}: only ha1_sha256 stored, so SIP phones cannot register "
                f"or authenticate as them (SIP digest challenges with MD5); add ha1_md5"
            )
        if config.auth.mode in ("password", "both"):
            no_digest = [
                u for u in ha1_only
                if not (u.username == u.number and config.auth.realm == realm)
            ]
            if no_digest:
                warnings.append(
                    f"{names(no_digest)}: only HA1 values stored, so web logins "
                    f"work with Basic (and POST /api/token with Basic), not with Digest, "
                    f"which needs username = number and [auth] realm = the SIP realm "
                    f"{realm!r}"
                )
        for line in warnings:
            logger.warning("%s", line)
        return warnings

    # ------------------------------------------------------------------ users file

    def _set_local(self, file_users: tuple[User, ...]) -> None:
        local = (*self._table, *file_users)
        self._file_users = file_users
        self._by_number = {u.number: u for u in local}
        self._by_username = {u.username: u for u in local}

    def _stat(self) -> tuple[int, int, int] | None:
        assert self._users_file is not None
        try:
            st = os.stat(self._users_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load_file(self) -> tuple[User, ...]:
        assert self._users_file is not None
        names = {u.username: "a [[users]] entry in the configuration" for u in self._table}
        numbers = {u.number: "a [[users]] entry in the configuration" for u in self._table}
        for number, what in self._reserved.items():
            numbers.setdefault(number, what)
        return parse_users_file(
            self._users_file, taken_names=names, taken_numbers=numbers, realm=self.realm
        )

    def poll(self) -> bool:
        """Check the users file now; reload it if it changed. True when reloaded.

        A bad file keeps the previous users and logs one error line (once per version
        of the file)."""
        if self._users_file is None:
            return False
        with self._lock:
            self._next_check = self._clock() + self._reload_interval
            signature = self._stat()
            if signature == self._signature:
                return False
            if signature is not None and signature == self._bad_signature:
                return False
            try:
                if signature is None:
                    # the file is gone (or being replaced): keep the users, say so once
                    raise ConfigError(self._users_file, None, "cannot read file: not found")
                file_users = self._load_file()
            except ConfigError as e:
                if self._bad_signature != (signature or "missing"):
                    self.reload_errors += 1
                    logger.error("users file not reloaded, keeping the previous users: %s", e)
                self._bad_signature = signature or "missing"
                return False
            self._signature = signature
            self._bad_signature = None
            self._set_local(file_users)
            self.reloads += 1
            logger.info(
                "users file %s reloaded: %d users", self._users_file, len(file_users)
            )
            return True

    def _maybe_reload(self) -> None:
        if self._users_file is not None and self._clock() >= self._next_check:
            self.poll()

    async def watch(self) -> None:
        """Poll the users file every `reload_interval` seconds until cancelled (optional:
        lookups check the file too, at most every `reload_interval` seconds)."""
        if self._users_file is None:
            return
        while True:
            await asyncio.sleep(self._reload_interval)
            self.poll()

    # ------------------------------------------------------------------ lookups

    def by_number(self, number: str, *, ldap: bool = True) -> User | None:
        """The user reached at `number` (exact match; LDAP numbers are normalized).
        `ldap=False` skips the (blocking) LDAP query: for callers on the event loop that
        only need what LDAP never has, such as passwords."""
        self._maybe_reload()
        user = self._by_number.get(number)
        if user is None and ldap and self.ldap is not None and number:
            user = self.ldap.by_number(number)
        return user

    def by_username(self, username: str, *, ldap: bool = True) -> User | None:
        self._maybe_reload()
        user = self._by_username.get(username)
        if user is None and ldap and self.ldap is not None and username:
            user = self.ldap.by_username(username)
        return user

    def users(self) -> list[User]:
        """Every user: [[users]], the users file, then LDAP users (without passwords)."""
        self._maybe_reload()
        found = list(self._by_username.values())
        if self.ldap is not None:
            known = set(self._by_username)
            found.extend(u for u in self.ldap.users() if u.username not in known)
        return found

    def check_password(self, username: str, password: str) -> bool:
        """True when `password` is the user's: compared in constant time for local users
        (with the stored HA1 when no password is stored: `password_matches`), by binding
        as the user for LDAP users. An empty password is never right."""
        if not password:
            return False
        self._maybe_reload()
        user = self._by_username.get(username)
        if user is not None:
            return password_matches(user, password, self.realm)
        if self.ldap is not None:
            return self.ldap.check_password(username, password)
        return False

    # ------------------------------------------------------------------ credentials

    # Local users only: LDAP has no passwords to give, and these are called on the event
    # loop (by the SIP user agent and the web authenticator), where LDAP would block.

    def sip_secret(self, number: str) -> Secret | None:
        """What SIP digest checks for the user at `number` (the digest user name): the
        password, else the stored HA1 values (which hash number and SIP realm); None for
        an unknown number or a user with neither."""
        user = self.by_number(number, ldap=False)
        if user is None or not (user.password or user.ha1_md5 or user.ha1_sha256):
            return None
        return Secret(
            password=user.password or None, ha1_md5=user.ha1_md5, ha1_sha256=user.ha1_sha256
        )

    def web_credentials(self, username: str) -> StoredCredentials | None:
        """What a web login (Basic/Digest, gateway/auth.py) checks for `username`: the
        password and/or HA1 values with what they hash (the number and the SIP realm)."""
        user = self.by_username(username, ldap=False)
        if user is None or not (user.password or user.ha1_md5 or user.ha1_sha256):
            return None
        return StoredCredentials(
            password=user.password or None,
            ha1_md5=user.ha1_md5,
            ha1_sha256=user.ha1_sha256,
            ha1_username=user.number,
            ha1_realm=self.realm,
        )

    # ------------------------------------------------------------------ async variants

    async def aby_number(self, number: str) -> User | None:
        if self.ldap is None or number in self._by_number:
            return self.by_number(number)
        return await asyncio.to_thread(self.by_number, number)

    async def aby_username(self, username: str) -> User | None:
        if self.ldap is None or username in self._by_username:
            return self.by_username(username)
        return await asyncio.to_thread(self.by_username, username)

    async def ausers(self) -> list[User]:
        if self.ldap is None:
            return self.users()
        return await asyncio.to_thread(self.users)

    async def acheck_password(self, username: str, password: str) -> bool:
        if self.ldap is None or username in self._by_username:
            return self.check_password(username, password)
        return await asyncio.to_thread(self.check_password, username, password)


# --------------------------------------------------------------------------- LDAP


def _first(attributes: Mapping[str, Any], name: str) -> str | None:
    for key, value in attributes.items():
        if key.lower() == name.lower():
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            return str(value) if value is not None else None
    return None


def normalize_number(value: str | None) -> str:
    """An LDAP telephone number as a dial string: "+49 30 123-456" -> "+4930123456";
    "" when it is not digits with an optional leading "+"."""
    if not value:
        return ""
    number = _NUMBER_JUNK_RE.sub("", value)
    return number if _NUMBER_RE.fullmatch(number) else ""


class LdapSource:
    """Users from an LDAP directory (blocking calls; the `ldap3` library, imported here).

    LDAP users have `password == ""` (never known) and `number == ""` when their entry
    has no usable number attribute. Failures to reach the server are logged and answer
    "not found" / False (and are not cached).
    """

    def __init__(self, config: LdapConfig, clock: Callable[[], float] = time.monotonic) -> None:
        try:
            import ldap3  # noqa: F401  (optional dependency, imported lazily)
        except ImportError:
            raise ConfigError(
                "[directory.ldap]", None,
                "the ldap3 library is not installed (pip install 'webrtc-sip-gateway[ldap]')",
            ) from None
        self.config = config
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._cache_lock = threading.Lock()

    # -- plumbing

    def _server(self) -> Any:
        import ldap3

        return ldap3.Server(self.config.url, connect_timeout=self.config.timeout,
                            get_info=ldap3.NONE)

    def _connect(self, user: str | None, password: str | None) -> Any:
        import ldap3

        return ldap3.Connection(
            self._server(),
            user=user,
            password=password,
            auto_bind=ldap3.AUTO_BIND_NO_TLS,
            receive_timeout=max(1, math.ceil(self.config.timeout)),  # ldap3 wants an int
            raise_exceptions=False,
            read_only=True,
        )

    def _filter(self, username: str | None, extra: str = "") -> str:
        from ldap3.utils.conv import escape_filter_chars

        value = "*" if username is None else escape_filter_chars(username)
        base = self.config.user_filter.replace("{username}", value)
        return f"(&{base}{extra})" if extra else base

    def _search(self, search_filter: str, limit: int) -> list[tuple[str, User]]:
        """[(dn, user)] for the entries matching; raises ldap3 exceptions."""
        c = self.config
        attributes = [c.username_attribute, c.number_attribute, c.display_name_attribute]
        conn = self._connect(c.bind_dn, c.bind_password)
        try:
            conn.search(c.base_dn, search_filter, attributes=attributes, size_limit=limit)
            found = []
            for entry in conn.response or []:
                if entry.get("type") != "searchResEntry":
                    continue
                attrs = entry.get("attributes", {})
                username = _first(attrs, c.username_attribute)
                if not username:
                    continue
                name = _first(attrs, c.display_name_attribute) or username
                number = normalize_number(_first(attrs, c.number_attribute))
                found.append((entry["dn"], User(username, "", number, name)))
            return found
        finally:
            conn.unbind()

    def _cached(self, key: tuple[str, str], fetch: Callable[[], Any]) -> Any:
        now = self._clock()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        value = fetch()
        if self.config.cache_ttl > 0:
            with self._cache_lock:
                if len(self._cache) > 10000:
                    self._cache.clear()
                self._cache[key] = (now + self.config.cache_ttl, value)
        return value

    def _lookup(self, search_filter: str) -> list[tuple[str, User]] | None:
        from ldap3.core.exceptions import LDAPException

        try:
            return self._search(search_filter, limit=2)
        except LDAPException as e:
            logger.error("LDAP %s: lookup %s failed: %s", self.config.url, search_filter, e)
            return None

    # -- the source API

    def by_username(self, username: str) -> User | None:
        def fetch() -> User | None:
            found = self._lookup(self._filter(username))
            if found is None:
                raise _NotCached(None)
            return next((u for _dn, u in found if u.username == username), None)

        return _uncached_on_error(lambda: self._cached(("u", username), fetch))

    def by_number(self, number: str) -> User | None:
        from ldap3.utils.conv import escape_filter_chars

        def fetch() -> User | None:
            attr = self.config.number_attribute
            found = self._lookup(self._filter(None, f"({attr}={escape_filter_chars(number)})"))
            if found is None:
                raise _NotCached(None)
            return next((u for _dn, u in found if u.number == number), None)

        return _uncached_on_error(lambda: self._cached(("n", number), fetch))

    def users(self, limit: int = 1000) -> list[User]:
        """Up to `limit` users (not cached)."""
        from ldap3.core.exceptions import LDAPException

        try:
            return [u for _dn, u in self._search(self._filter(None), limit=limit)]
        except LDAPException as e:
            logger.error("LDAP %s: listing users failed: %s", self.config.url, e)
            return []

    def check_password(self, username: str, password: str) -> bool:
        """Bind as the user's DN with `password` (never cached; empty is refused)."""
        from ldap3.core.exceptions import LDAPBindError, LDAPException

        if not password or not username:
            return False
        found = self._lookup(self._filter(username))
        dn = next((dn for dn, u in found or [] if u.username == username), None)
        if dn is None:
            return False
        try:
            conn = self._connect(dn, password)
        except LDAPBindError:
            return False
        except LDAPException as e:
            logger.error("LDAP %s: bind as %s failed: %s", self.config.url, dn, e)
            return False
        ok = bool(conn.bound)
        conn.unbind()
        return ok


class _NotCached(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def _uncached_on_error(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except _NotCached as e:
        return e.value
