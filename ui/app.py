"""The web app `livedit serve` runs: the chat at / for everyone, the operations console at
/admin behind a login (users from ``[ui] admins``, hashed passwords).

``build_app(services)`` is the chat page and ``build_console(services)`` the console, each a
``gr.Blocks`` whose callbacks are plain functions over ``services``; ``build_server`` mounts
both on one FastAPI app. Importing this module launches nothing.
"""

from __future__ import annotations

import gradio as gr

from ui.auth import login_check
from ui.chat import MAX_QUESTION_CHARS, build_chat, respond  # noqa: F401  (the chat's callbacks live there)
from ui.console_page import build_console

NO_ADMINS = ("No console users are configured: add one to [ui] admins in config.toml "
             "(`livedit ui hash-password NAME` prints the entry).")


def build_app(services) -> gr.Blocks:
    """The chat page (open to everyone)."""
    return build_chat(services, limit=services.config.ui.max_message_chars)


def build_server(services):
    """One FastAPI app: the console at /admin (login required for the page and every endpoint),
    then the chat at /."""
    from fastapi import FastAPI

    admins = services.config.ui.admins
    server = FastAPI()
    console = build_console(services).queue(default_concurrency_limit=2)
    server = gr.mount_gradio_app(server, console, path="/admin", auth=login_check(admins),
                                 auth_message="livedit operations console" if admins else NO_ADMINS,
                                 ssr_mode=False, footer_links=["api"])
    chat = build_app(services).queue(default_concurrency_limit=8)
    return gr.mount_gradio_app(server, chat, path="", ssr_mode=False, footer_links=["api"])
