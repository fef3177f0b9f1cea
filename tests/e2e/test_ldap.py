"""The LDAP directory source against a real slapd (Debian's `slapd`), started here.

slapd runs in the foreground (`-d 0`) as the current user on a free loopback port, with
a temporary slapd.conf and an mdb database filled by `slapadd` from a tiny LDIF; it is
stopped by its PID at the end.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import LdapConfig, User, load_config
from gateway.directory import Directory, LdapSource

pytestmark = pytest.mark.e2e

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")
SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "adminpw"

LDIF = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: uid=dave,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: dave
cn: Dave Example
sn: Example
telephoneNumber: +49 30 555-0100
userPassword: davepw

dn: uid=erin,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: erin
cn: Erin
sn: E
telephoneNumber: 2002
userPassword: erinpw

dn: uid=frank,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: frank
cn: Frank NoNumber
sn: F
userPassword: frankpw
"""


def _require(path: str, package: str) -> None:
    """Skip when slapd is missing, except in CI where that is an error."""
    if os.path.exists(path):
        return
    message = f"{path} not found: install the Debian package {package} (make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running slapd; yields its ldap:// URL."""
    _require(SLAPD, "slapd")
    _require(SLAPADD, "slapd")
    work = tmp_path_factory.mktemp("slapd")
    (work / "db").mkdir()
    conf = work / "slapd.conf"
    conf.write_text(
        f"""\
include {SCHEMA}/core.schema
include {SCHEMA}/cosine.schema
include {SCHEMA}/inetorgperson.schema
modulepath {MODULES}
moduleload back_mdb
pidfile {work}/slapd.pid
database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PW}
directory {work}/db
access to attrs=userPassword by anonymous auth by self read by * none
access to * by * read
"""
    )
    (work / "data.ldif").write_text(LDIF)
    subprocess.run(
        [SLAPADD, "-f", str(conf), "-l", str(work / "data.ldif")],
        check=True, capture_output=True, timeout=30,
    )
    for _attempt in range(5):
        port = _free_port()
        log = open(work / "slapd.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [SLAPD, "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while proc.poll() is None and not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None and _listening(port):
            break
        proc.kill()
        proc.wait()
        log.close()
    else:
        pytest.fail(f"slapd did not start: {(work / 'slapd.log').read_text()[-2000:]}")
    try:
        yield f"ldap://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def ldap_config(slapd: str) -> LdapConfig:
    return LdapConfig(
        url=slapd,
        base_dn=f"ou=people,{SUFFIX}",
        bind_dn=ROOT_DN,
        bind_password=ROOT_PW,
        timeout=3.0,
    )


def test_lookups(ldap_config: LdapConfig) -> None:
    d = Directory([User("alice", "a", "1001", "Alice")], ldap=ldap_config)
    dave = User("dave", "", "+49305550100", "Dave Example")
    assert d.by_username("dave") == dave
    assert d.by_number("+49305550100") == dave  # telephoneNumber "+49 30 555-0100"
    assert d.by_number("2002") == User("erin", "", "2002", "Erin")
    assert d.by_username("frank") == User("frank", "", "", "Frank NoNumber")
    assert d.by_username("nobody") is None and d.by_number("9999") is None
    assert d.by_username("*") is None  # filter characters are escaped
    assert d.by_username("alice") == User("alice", "a", "1001", "Alice")  # local first
    assert sorted(u.username for u in d.users()) == ["alice", "dave", "erin", "frank"]


def test_password_check_binds_as_the_user(ldap_config: LdapConfig) -> None:
    d = Directory(ldap=ldap_config)
    assert d.check_password("dave", "davepw")
    assert d.check_password("frank", "frankpw")
    assert not d.check_password("dave", "erinpw")
    assert not d.check_password("dave", "")  # an empty password would be an anonymous bind
    assert not d.check_password("nobody", "x")
    assert not d.check_password("*", "davepw")


async def test_async_variants(ldap_config: LdapConfig) -> None:
    d = Directory(ldap=ldap_config)
    assert (await d.aby_username("erin")) == User("erin", "", "2002", "Erin")
    assert (await d.aby_number("2002")) is not None
    assert await d.acheck_password("erin", "erinpw")
    assert not await d.acheck_password("erin", "nope")
    assert len(await d.ausers()) == 3


def test_anonymous_search(ldap_config: LdapConfig) -> None:
    d = Directory(ldap=replace(ldap_config, bind_dn=None, bind_password=None))
    assert d.by_number("2002") is not None
    assert d.check_password("erin", "erinpw")


def test_from_config_file(slapd: str, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[directory.ldap]\nurl = "{slapd}"\nbase_dn = "{SUFFIX}"\n'
        f'bind_dn = "{ROOT_DN}"\nbind_password = "{ROOT_PW}"\n'
        'user_filter = "(&(objectClass=inetOrgPerson)(uid={username}))"\n'
    )
    config = load_config(str(cfg))
    assert config.users == () and not config.demo_users
    d = Directory.from_config(config)
    assert d.by_number("2002") == User("erin", "", "2002", "Erin")
    assert d.check_password("dave", "davepw")


def test_cache_and_unreachable_server(
    ldap_config: LdapConfig, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    source = LdapSource(ldap_config, clock=lambda: now[0])
    assert source.by_username("dave") is not None
    # a wrong service password: lookups fail (logged), cached answers still served
    source.config = replace(ldap_config, bind_password="wrong")
    assert source.by_username("dave") is not None  # from the cache
    now[0] += ldap_config.cache_ttl + 1
    with caplog.at_level(logging.ERROR, logger="gateway.directory"):
        assert source.by_username("dave") is None
    assert "LDAP" in caplog.text

    port = _free_port()  # nothing listens there
    down = LdapSource(replace(ldap_config, url=f"ldap://127.0.0.1:{port}", timeout=1.0))
    with caplog.at_level(logging.ERROR, logger="gateway.directory"):
        assert down.by_number("2002") is None
        assert not down.check_password("dave", "davepw")
        assert down.users() == []
