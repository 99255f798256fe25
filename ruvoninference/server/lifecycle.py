"""Running the app under uvicorn, and stopping it without surprising anyone.

On SIGTERM (or Ctrl-C, SIGINT) the server

1. stops admitting: the listening socket closes, and requests on connections still open get a 503;
2. lets the running requests finish for at most `shutdown_timeout` seconds (a rolling restart loses
   nothing that fits in that time);
3. then ends whatever still runs with an error in OpenAI's shape (an error event for a stream, a 503 for
   a waiting non-streaming request), so every client learns its request did not finish, and exits.

A second signal exits at once, without waiting. uvicorn's own handling differs in three ways this module
changes: it waits for running requests without a limit, a second SIGTERM is ignored, and a stream cut at
its forced exit gets no error event.
"""

from __future__ import annotations

import asyncio

import uvicorn

from ruvoninference.server.async_engine import ShuttingDown


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.shutdown_timeout = shutdown_timeout
        self.forced = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:  # runs in the main thread, between two bytecodes
        if self.should_exit:
            self.force_exit = self.forced = True
            return
        self.should_exit = True
        engine = self.config.app.state.engine
        engine.draining = True
        if self._loop is not None:
            error = ShuttingDown(f"The server shut down before this request finished (it lets running "
                                 f"requests finish for {self.shutdown_timeout:g} s); retry it after the restart.")
            self._loop.call_soon_threadsafe(self._loop.call_later, self.shutdown_timeout, engine.fail_all, error)


def run(app, host: str, port: int, shutdown_timeout: float = 30.0, access_log: bool = False) -> bool:
    """Serve until a signal; True when a second signal cut the graceful shutdown short."""
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=access_log,
                            timeout_graceful_shutdown=shutdown_timeout + 5)
    server = Server(config, shutdown_timeout)
    server.run()
    return server.forced
