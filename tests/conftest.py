"""
``GATEWAY_TEST_LOOP=uvloop``: the async tests run on uvloop, the loop the gateway
itself runs on (gateway/cli.py), instead of asyncio's own. uvloop differs where
it matters to media: its clock counts whole milliseconds (rtc.timers).

    GATEWAY_TEST_LOOP=uvloop .venv/bin/python -m pytest tests/rtc
"""

import os
from collections.abc import Callable, Mapping
from typing import Any

if os.environ.get("GATEWAY_TEST_LOOP") == "uvloop":
    import uvloop

    def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], Any]]:
        return {"uvloop": uvloop.new_event_loop}
