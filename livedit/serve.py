"""`livedit serve`: one process that serves the web app (the chat at /, the operations console
at /admin) while the model, the engine, the updater and the scheduler open behind it, and that
stops cleanly on SIGINT or SIGTERM. `livedit ui hash-password` makes a console user's entry."""

from __future__ import annotations

import getpass
import logging
import signal
import sys
import threading
import time
import webbrowser

log = logging.getLogger(__name__)


def serve(config, state_dir=None, host: str = "127.0.0.1", port: int = 7860, open_browser: bool = False,
          stop: threading.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set)."""
    from livedit.services import Services
    from ui.app import build_server

    stop = stop or threading.Event()
    services = Services(config, state_dir)
    server = _Server(build_server(services), host, port)
    previous = _on_signals(lambda *_: _stop_once(stop))
    try:
        server.start()
        url = f"http://{host}:{port}"
        print(f"livedit: serving on {url} (the console: {url}/admin; Ctrl-C stops)", flush=True)
        if open_browser:
            webbrowser.open(url)
        services.start()
        stop.wait()
        print("livedit: stopping: a running job finishes its batch first", flush=True)
    finally:
        try:
            services.close()
        finally:
            server.stop()
            _on_signals(previous)        # a second signal while closing is only noted
    print("livedit: stopped", flush=True)


class _Server:
    """uvicorn serving the app in a thread (the main thread keeps the signals)."""

    def __init__(self, app, host: str, port: int):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.server.install_signal_handlers = lambda: None     # older uvicorn; newer ones skip off-main threads
        self.thread = threading.Thread(target=self.server.run, name="livedit-http", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the web server could not start on {self.server.config.host}:"
                              f"{self.server.config.port} (is the port taken?)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _stop_once(stop: threading.Event) -> None:
    if stop.is_set():
        print("livedit: already stopping; the running job is finishing its batch", flush=True)
    stop.set()


def _on_signals(handler):
    """Install ``handler`` (or a dict of earlier handlers) for SIGINT and SIGTERM; returns the old ones."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = handler if isinstance(handler, dict) else {signal.SIGINT: handler, signal.SIGTERM: handler}
    return {number: signal.signal(number, chosen) for number, chosen in handlers.items()}


def cmd_hash_password(args) -> None:
    from ui.auth import admin_entry

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise SystemExit("livedit: the two passwords differ; nothing printed")
    if not password:
        raise SystemExit("livedit: an empty password is not allowed")
    entry = admin_entry(args.name, password)
    print(f"{entry}\n# add it to config.toml:  [ui]  admins = [\"{entry}\"]", flush=True)


def cmd_serve(args) -> None:
    serve(args.config, state_dir=args.state_dir, host=args.host, port=args.port, open_browser=args.open)


def register(commands) -> None:
    parser = commands.add_parser("serve", help="serve the chat and the operations console, and keep editing the model on a schedule")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.set_defaults(run=cmd_serve)
    ui = commands.add_parser("ui", help="the web app's settings: make a console user's password hash")
    ui_commands = ui.add_subparsers(dest="ui_command", required=True)
    hashing = ui_commands.add_parser("hash-password", help="print a [ui] admins entry (name and salted hash)")
    hashing.add_argument("name", help="the console user's name")
    hashing.add_argument("--password-stdin", action="store_true", help="read the password from stdin (scripts)")
    hashing.set_defaults(run=cmd_hash_password)
