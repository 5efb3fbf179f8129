"""`livedit serve`: one process that serves the chat page while the model, the engine, the
updater and the scheduler open behind it, and that stops cleanly on SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def serve(config, state_dir=None, host: str = "127.0.0.1", port: int = 7860, open_browser: bool = False,
          stop: threading.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set)."""
    from livedit.services import Services
    from ui.app import build_app

    stop = stop or threading.Event()
    services = Services(config, state_dir)
    app = build_app(services)
    previous = _on_signals(lambda *_: _stop_once(stop))
    try:
        app.queue(default_concurrency_limit=8)
        app.launch(server_name=host, server_port=port, ssr_mode=False, prevent_thread_lock=True,
                   inbrowser=open_browser, quiet=True)
        print(f"livedit: serving on http://{host}:{port} (Ctrl-C stops)", flush=True)
        services.start()
        stop.wait()
        print("livedit: stopping: a running job finishes its batch first", flush=True)
    finally:
        try:
            services.close()
        finally:
            app.close()
            _on_signals(previous)        # a second signal while closing is only noted
    print("livedit: stopped", flush=True)


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


def cmd_serve(args) -> None:
    serve(args.config, state_dir=args.state_dir, host=args.host, port=args.port, open_browser=args.open)


def register(commands) -> None:
    parser = commands.add_parser("serve", help="serve the chat page and keep editing the model on a schedule")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.set_defaults(run=cmd_serve)
