"""Tests for gateway.directory: [[users]], users files (TOML, CSV), reload on change."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from gateway.auth import StoredCredentials
from gateway.config import ConfigError, User, load_config, parse_users_file
from gateway.directory import Directory, normalize_number, password_matches
from sip.auth_server import Secret

TOML_USERS = """
[[users]]
username = "dave"
password = "davepw"
number = "2001"
display_name = "Dave"

[[users]]
username = "erin"
password = "erinpw"
number = "+4930200"
"""

CSV_USERS = """username,password,number,display_name
# a comment line
dave,davepw,2001,Dave
erin,erinpw,+4930200,
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> None:
    """Write and bump the mtime (a reload must see the change even within one tick)."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize(("name", "text"), [("users.toml", TOML_USERS), ("users.csv", CSV_USERS)])
def test_users_file_formats(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert parse_users_file(str(path)) == (
        User("dave", "davepw", "2001", "Dave"),
        User("erin", "erinpw", "+4930200", "erin"),
    )


def test_config_with_users_file(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_text(CSV_USERS)
    config = tmp_path / "gw.toml"
    config.write_text(
        '[directory]\nusers_file = "users.csv"\n\n'
        '[[users]]\nusername = "alice"\npassword = "a"\nnumber = "1001"\n'
    )
    c = load_config(str(config))  # relative to the config file, not the working dir
    assert c.directory.users_file == str(tmp_path / "users.csv")
    assert [u.username for u in c.users] == ["alice", "dave", "erin"]
    assert not c.demo_users
    d = Directory.from_config(c)
    assert d.by_number("2001") == User("dave", "davepw", "2001", "Dave")
    assert d.by_username("alice") is not None and d.by_number("1001") is not None
    assert [u.username for u in d.users()] == ["alice", "dave", "erin"]
    assert d.check_password("dave", "davepw") and d.check_password("alice", "a")
    assert not d.check_password("dave", "wrong") and not d.check_password("dave", "")
    assert not d.check_password("nobody", "x")


def test_users_file_alone_replaces_demo_users(tmp_path: Path) -> None:
    (tmp_path / "u.toml").write_text(TOML_USERS)
    (tmp_path / "gw.toml").write_text('[directory]\nusers_file = "u.toml"\n')
    c = load_config(str(tmp_path / "gw.toml"))
    assert [u.username for u in c.users] == ["dave", "erin"] and not c.demo_users


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("u.csv", "username,password,number\ndave,pw,12a\n",
         'config error in {p}: line 2 number: expected digits with an optional leading "+", '
         'got "12a"'),
        ("u.csv", "username,password,number\ndave,pw\n",
         "config error in {p}: line 2: expected 3 fields, got 2"),
        ("u.csv", "user,password,number\n",
         'config error in {p}: line 1: unknown column "user" in the header '
         "(expected username,password,number,display_name; display_name optional; "
         "ha1_md5,ha1_sha256 besides or instead of password)"),
        ("u.csv", "username,number\n", "config error in {p}: line 1: header lacks the "
         "password column"),
        ("u.csv", "username,password,number\na,pw,1\nb,pw,1\n",
         'config error in {p}: line 3 number: duplicate number "1" (also line 2 in {p})'),
        ("u.toml", '[[users]]\nusername = "a"\npassword = "pw"\n',
         "config error in {p}: [[users]] #1 number: missing (required for every user)"),
        ("u.toml", "[[users]\n", "config error in {p}: invalid TOML: "),
        ("u.toml", '[other]\nx = 1\n',
         "config error in {p}: [other]: unknown section (a users file has only [[users]])"),
    ],
)
def test_bad_users_file_is_a_config_error(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    (tmp_path / "gw.toml").write_text(f'[directory]\nusers_file = "{name}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "gw.toml"))
    assert str(info.value).startswith(message.format(p=path))
    assert "\n" not in str(info.value)


def test_users_file_conflicts_with_table_and_test_numbers(tmp_path: Path) -> None:
    (tmp_path / "u.csv").write_text("username,password,number\nalice,pw,2000\n")
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[directory]\nusers_file = "u.csv"\n[[users]]\nusername = "alice"\n'
                   'password = "a"\nnumber = "1001"\n')
    with pytest.raises(ConfigError, match=r'line 2 username: duplicate username "alice" '
                       r"\(also a \[\[users\]\] entry in "):
        load_config(str(cfg))
    (tmp_path / "u.csv").write_text("username,password,number\nbob,pw,9000\n")
    with pytest.raises(ConfigError, match=r'\[numbers\] echo: number "9000" is user "bob"'):
        load_config(str(cfg))


def test_missing_users_file(tmp_path: Path) -> None:
    (tmp_path / "gw.toml").write_text('[directory]\nusers_file = "nope.csv"\n')
    with pytest.raises(ConfigError, match=r"nope\.csv: cannot read file: No such file"):
        load_config(str(tmp_path / "gw.toml"))


def test_cli_exits_2_on_a_bad_users_file(tmp_path: Path) -> None:
    from gateway import cli

    (tmp_path / "u.csv").write_text("username,password,number\ndave,,1\n")
    (tmp_path / "gw.toml").write_text('[directory]\nusers_file = "u.csv"\n')
    assert cli.main(["--config", str(tmp_path / "gw.toml"), "calls"]) == 2


def test_reload_on_change_and_bad_reload_keeps_users(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.csv"
    path.write_text(CSV_USERS)
    clock = Clock()
    d = Directory(
        [User("alice", "a", "1001", "Alice")],
        users_file=str(path),
        reload_interval=2.0,
        reserved_numbers={"9000": "[numbers] echo"},
        clock=clock,
    )
    assert d.by_number("2001") is not None

    write(path, "username,password,number,display_name\nfrank,fpw,2003,Frank\n")
    assert d.by_number("2003") is None  # checked at most every reload_interval
    clock.now += 2.0
    assert d.by_number("2003") == User("frank", "fpw", "2003", "Frank")
    assert d.by_number("2001") is None and d.by_username("alice") is not None
    assert d.reloads == 1

    # a bad file: one error line naming file, line and key; the previous users stay
    with caplog.at_level(logging.ERROR, logger="gateway.directory"):
        write(path, "username,password,number\nfrank,fpw,2003\ngina,gpw,not-a-number\n")
        clock.now += 2.0
        assert d.by_number("2003") is not None
        clock.now += 2.0
        assert d.check_password("frank", "fpw")  # checked again, logged only once
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "users file not reloaded, keeping the previous users: config error in "
        f'{path}: line 3 number: expected digits with an optional leading "+", '
        'got "not-a-number"'
    ]
    assert d.reload_errors == 1

    # a reserved (test) number is refused on reload too
    write(path, "username,password,number\nhank,hpw,9000\n")
    assert not d.poll()
    assert d.by_username("hank") is None and d.reload_errors == 2
    assert '"9000" (also [numbers] echo)' in caplog.text

    # a deleted file keeps the users; a good file afterwards is picked up again
    path.unlink()
    assert not d.poll() and d.by_username("frank") is not None
    write(path, "username,password,number\nivy,ipw,2004\n")
    assert d.poll()
    assert [u.username for u in d.users()] == ["alice", "ivy"]


async def test_watch_task_reloads(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "users.toml"
    path.write_text(TOML_USERS)
    d = Directory(users_file=str(path), reload_interval=0.05)
    task = asyncio.create_task(d.watch())
    try:
        write(path, '[[users]]\nusername = "zed"\npassword = "z"\nnumber = "2999"\n')
        for _ in range(100):
            if d.reloads:
                break
            await asyncio.sleep(0.02)
        assert d._by_username.keys() == {"zed"}  # reloaded by the task, not by a lookup
        assert await d.aby_number("2999") is not None
        assert await d.acheck_password("zed", "z")
    finally:
        task.cancel()


def test_plain_directory_still_works() -> None:
    d = Directory([User("a", "p", "1", "A")])
    assert d.by_number("1") == User("a", "p", "1", "A") and d.by_username("x") is None
    assert d.users() == [User("a", "p", "1", "A")] and d.check_password("a", "p")


def test_normalize_number() -> None:
    assert normalize_number("+49 30 555-0100") == "+49305550100"
    assert normalize_number("(030) 555.01") == "03055501"
    assert normalize_number("ext. 5") == "" and normalize_number(None) == ""


def test_ldap_config_errors(tmp_path: Path) -> None:
    from gateway.config import parse_config

    def err(ldap: dict[str, object]) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config({"directory": {"ldap": ldap}}, "/gw.toml")
        return str(info.value)

    good = {"url": "ldap://127.0.0.1:389", "base_dn": "dc=example,dc=com"}
    assert err({"base_dn": "x"}) == (
        "config error in /gw.toml: [directory.ldap] url: missing (required for an LDAP "
        "directory)")
    assert "[directory.ldap] url: expected" in err({**good, "url": "http://x"})
    assert "[directory.ldap] user_filter: expected an LDAP filter" in err(
        {**good, "user_filter": "uid={user}"})
    assert "[directory.ldap] bind_password: set bind_dn as well" in err(
        {**good, "bind_password": "x"})
    assert "[directory.ldap] colour: unknown key" in err({**good, "colour": "x"})
    c = parse_config({"directory": {"ldap": good}}, "/gw.toml")
    assert c.directory.ldap is not None and c.directory.ldap.user_filter == "(uid={username})"
    assert c.users == () and not c.demo_users


# ----------------------------------------------------------------------------- HA1 users

REALM = "gw.example"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


HA1_USERS = [
    User("carol", "", "1003", "Carol", ha1_md5=_md5(f"1003:{REALM}:carol-pw")),
    User("dave", "", "1004", "Dave", ha1_md5=_md5(f"1004:{REALM}:dave-pw"),
         ha1_sha256=_sha256(f"1004:{REALM}:dave-pw")),
    User("erin", "erin-pw", "1005", "Erin"),
]


def test_password_matches_hashes_number_and_sip_realm() -> None:
    carol, dave, erin = HA1_USERS
    assert password_matches(carol, "carol-pw", REALM)
    assert not password_matches(carol, "carol-pw", "other-realm")
    assert not password_matches(carol, "carol-pw", None)  # realm unknown: cannot check
    assert not password_matches(carol, "wrong", REALM) and not password_matches(carol, "", REALM)
    assert password_matches(dave, "dave-pw", REALM)  # SHA-256 checked when stored
    broken = User("dave", "", "1004", "Dave", ha1_md5=_md5(f"1004:{REALM}:dave-pw"),
                  ha1_sha256="0" * 64)
    assert not password_matches(broken, "dave-pw", REALM)
    assert password_matches(erin, "erin-pw", None) and not password_matches(erin, "x", REALM)
    d = Directory(HA1_USERS, realm=REALM)
    assert d.check_password("carol", "carol-pw") and not d.check_password("carol", "x")
    assert d.check_password("erin", "erin-pw")


def test_sip_secret_and_web_credentials() -> None:
    d = Directory(HA1_USERS, realm=REALM)
    assert d.sip_secret("1003") == Secret(None, _md5(f"1003:{REALM}:carol-pw"), None)
    assert d.sip_secret("1005") == Secret("erin-pw")
    assert d.sip_secret("1999") is None and d.sip_secret("") is None
    assert d.web_credentials("carol") == StoredCredentials(
        None, _md5(f"1003:{REALM}:carol-pw"), None, "1003", REALM
    )
    assert d.web_credentials("erin") == StoredCredentials("erin-pw", None, None, "1005", REALM)
    assert d.web_credentials("nobody") is None
    # LDAP-like users (no password, no HA1) have no credentials to give.
    assert Directory([User("x", "", "1", "X")]).sip_secret("1") is None
    assert Directory([User("x", "", "1", "X")]).web_credentials("x") is None


def test_from_config_uses_the_sip_realm_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    md5 = _md5("1003:127.0.0.1:carol-pw")
    sha = _sha256("1004:127.0.0.1:dave-pw")
    (tmp_path / "gw.toml").write_text(
        '[auth]\nmode = "password"\n'
        f'[[users]]\nusername = "carol"\nnumber = "1003"\nha1_md5 = "{md5}"\n'
        f'[[users]]\nusername = "dave"\nnumber = "1004"\nha1_sha256 = "{sha}"\n'
        '[[users]]\nusername = "erin"\nnumber = "1005"\npassword = "erin-pw"\n'
    )
    config = load_config(str(tmp_path / "gw.toml"))
    with caplog.at_level(logging.WARNING, logger="gateway.directory"):
        d = Directory.from_config(config)
    assert d.realm == "127.0.0.1"  # [sip] realm unset: the SIP listen host
    assert d.check_password("carol", "carol-pw") and d.check_password("dave", "dave-pw")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("users carol, dave: only HA1 values stored, which hash the "
                                  "SIP realm: [sip] realm is not set")
    assert warnings[1].startswith("user dave: only ha1_sha256 stored, so SIP phones cannot")
    assert warnings[2].startswith("users carol, dave: only HA1 values stored, so web logins "
                                  "work with Basic")
    # Nothing to say without HA1-only users.
    assert Directory(HA1_USERS[2:], realm=REALM).warn_about_ha1(config) == []


def test_users_file_reload_checks_ha1_against_the_realm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.csv"
    path.write_text(f"username,number,ha1_md5\ncarol,1003,{_md5(f'1003:{REALM}:carol-pw')}\n")
    clock = Clock()
    d = Directory(users_file=str(path), clock=clock, realm=REALM)
    assert d.check_password("carol", "carol-pw")
    # A password beside an HA1 of another realm is refused on reload; carol stays.
    with caplog.at_level(logging.ERROR, logger="gateway.directory"):
        write(path, "username,password,number,ha1_md5\n"
                    f"carol,new-pw,1003,{_md5('1003:elsewhere:new-pw')}\n")
        assert not d.poll()
    assert "line 2 ha1_md5: does not match the password" in caplog.text
    assert d.check_password("carol", "carol-pw")
    write(path, "username,password,number,ha1_md5\n"
                f"carol,new-pw,1003,{_md5(f'1003:{REALM}:new-pw')}\n")
    assert d.poll() and d.check_password("carol", "new-pw")
