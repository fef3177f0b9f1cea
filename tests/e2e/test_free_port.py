"""free_port's pool (tests/e2e/conftest.py): exhausting a tiny range, release, bindability."""

from __future__ import annotations

import socket

import pytest

from tests.e2e.conftest import HOST, PORTS, PortPool, free_port


def tiny_pool(size: int) -> PortPool:
    """A pool over `size` ports that are free now (reserved from the run's pool)."""
    base = free_port(span=size)
    return PortPool(base, base + size, seed=1)


def test_exhausts_a_tiny_range_without_duplicates_then_reuses_released_ports() -> None:
    pool = tiny_pool(4)
    got = [pool.take() for _ in range(4)]
    assert sorted(got) == list(range(pool.low, pool.high))
    with pytest.raises(RuntimeError, match="no free port found"):
        pool.take()
    pool.release([got[2]])
    assert pool.take() == got[2]
    with pytest.raises(RuntimeError, match="no free port found"):
        pool.take()


def test_spans_do_not_overlap_and_a_released_span_is_found_again() -> None:
    pool = tiny_pool(5)
    first = pool.take(span=2)
    second = pool.take(span=2)
    assert {first, first + 1}.isdisjoint({second, second + 1})
    assert pool.low <= min(first, second) and max(first, second) + 1 < pool.high
    with pytest.raises(RuntimeError, match="no free port found"):
        pool.take(span=2)  # one port left over
    pool.release(range(first, first + 2))
    again = pool.take(span=2)
    assert {again, again + 1}.isdisjoint({second, second + 1})


def test_in_turn_search_goes_on_from_the_last_port_and_wraps_around() -> None:
    pool = tiny_pool(5)
    pool.RANDOM_TRIES = 0
    low = pool.low
    assert [pool.take() for _ in range(3)] == [low, low + 1, low + 2]
    pool.release([low])
    assert [pool.take() for _ in range(3)] == [low + 3, low + 4, low]
    with pytest.raises(RuntimeError, match="no free port found"):
        pool.take()


def test_a_bound_port_is_not_handed_out() -> None:
    pool = tiny_pool(3)
    busy = pool.low + 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, busy))
        got = {pool.take(), pool.take()}
        assert got == {pool.low, pool.low + 2}
        with pytest.raises(RuntimeError, match="no free port found"):
            pool.take()
        # Bound for UDP only: free for TCP.
        assert pool.take(udp=False, tcp=True) is not None
        pool.release([busy])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, busy))
        with pytest.raises(RuntimeError, match="no free port found"):
            pool.take(udp=False, tcp=True)
        assert pool.take(udp=True, tcp=False) == busy


def test_a_tests_ports_are_released_after_it_and_kept_ones_are_not() -> None:
    pool = tiny_pool(4)
    outside = pool.take()  # at import time, say: never released
    pool.begin_test()
    mine = pool.take(span=2)
    with pool.keep():  # a module-scoped fixture's port
        kept = pool.take()
    assert len({outside, mine, mine + 1, kept}) == 4
    pool.end_test()
    assert pool.taken == {outside, kept}
    assert pool.take(span=2) == mine


def test_this_tests_ports_are_recorded_for_release() -> None:
    port = free_port(tcp=False, span=3)
    assert {port, port + 1, port + 2} <= PORTS.taken
    assert PORTS._test is not None and port in PORTS._test
