"""Run the explorer on uvicorn: bind the socket, print the address once, serve until Ctrl-C."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from deepscope.errors import DeepscopeError
from deepscope.serve.app import LOOPBACK_HOSTS, create_app, new_token
from deepscope.serve.explorer import Explorer


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); a DeepscopeError if it is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise DeepscopeError(f"--host {host!r} is not an address of this machine ({error.strerror}).") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise DeepscopeError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port.") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_of(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def run_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000, *,
               log: Callable[[str], None] = print) -> None:
    """Serve ``explorer`` on ``host:port`` until Ctrl-C (or SIGTERM, which ends the process with that signal
    once the server has shut down: the workers stopped, the uploads removed).

    On a loopback address the server answers only requests addressed to a loopback name; on any other
    address it makes a token, prints it once in the address to open, and checks it on every request.
    """
    import uvicorn

    started = time.perf_counter()
    loopback = host in LOOPBACK_HOSTS
    token = None if loopback else new_token()
    sock = bind(host, port)
    port = sock.getsockname()[1]
    app = create_app(explorer, token=token, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)

    def loaded(future) -> None:
        if future.exception() is None:
            log(f"model ready after {time.perf_counter() - started:.1f} s")
        else:
            log(f"the model could not be loaded: {future.exception()}")

    log(f"deepscope serve: open {url_of(host, port, token)}  (Ctrl-C stops)")
    if token:
        log("anyone on the network with this address can use the explorer; the token is not shown again.")
    explorer.ready().add_done_callback(loaded)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down, then raises the signal it caught again
        pass
    log("deepscope serve: stopped")
