"""``python -m tests.ratelimit.sandbox_proc PORT``: the Aelyst sandbox in a process of its own.

The accuracy tests measure what the provider sees; a sandbox sharing an event loop
with the load it measures would stamp arrivals late whenever that loop is busy.
"""

from __future__ import annotations

import sys

from aiohttp import web

from gateway.registry import sandboxes
from tests.conftest import KEYS


def main() -> None:
    app = sandboxes()["aelyst"](api_key=KEYS["aelyst"])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                print=lambda *_: print("sandbox ready", flush=True))


if __name__ == "__main__":
    main()
