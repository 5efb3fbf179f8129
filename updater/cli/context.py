"""What every updater command shares: the config, the store, the queue, the user, a progress bar."""

from __future__ import annotations

import getpass
import os
from contextlib import contextmanager


def default_user() -> str:
    """The OS user, for --who."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def open_store(args):
    from updater.store.knowledge import KnowledgeStore
    return KnowledgeStore.open(args.config)


def open_queue(args):
    from updater.queue import EditQueue
    return EditQueue.open(args.config)


@contextmanager
def progress_bar(args, description: str):
    """A progress(done, total) callback that draws a tqdm bar on stderr (none with -q)."""
    from tqdm.auto import tqdm

    with tqdm(desc=description, unit="fact", disable=getattr(args, "quiet", False)) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
        yield progress
