"""The user directory: who may log in, with which number and name."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config import User


class Directory:
    def __init__(self, users: Iterable[User]) -> None:
        self._by_number = {u.number: u for u in users}
        self._by_username = {u.username: u for u in users}

    def by_number(self, number: str) -> User | None:
        return self._by_number.get(number)

    def by_username(self, username: str) -> User | None:
        return self._by_username.get(username)

    def users(self) -> list[User]:
        return list(self._by_username.values())
