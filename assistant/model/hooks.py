"""Forward hooks that live only inside context managers.

Every hook is removed in ``__exit__``, even when the forward pass raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, hidden):
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def _recording(modules: dict[str, torch.nn.Module], register: str, pick) -> Iterator[dict[str, torch.Tensor]]:
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in modules.items():
        def hook(_module, *hook_args, name=name):
            captured[name] = pick(*hook_args)
        handles.append(getattr(module, register)(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def capture_inputs(modules: dict[str, torch.nn.Module]):
    """Record each module's first input, (B, T, d_in), under its name."""
    return _recording(modules, "register_forward_pre_hook", lambda args: args[0])


def capture_outputs(modules: dict[str, torch.nn.Module]):
    """Record each module's output hidden state, (B, T, d), under its name."""
    return _recording(modules, "register_forward_hook", lambda _args, output: _first(output))


@contextmanager
def edit_output(module: torch.nn.Module, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the module's output hidden state h by edit(h) during forward passes."""
    def hook(_module, _args, output):
        return _replace_first(output, edit(_first(output)))
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def stop_after(module: torch.nn.Module) -> Iterator[None]:
    """End the forward pass right after ``module`` runs; the StopForward is swallowed."""
    def hook(_module, _args, _output):
        raise StopForward
    handle = module.register_forward_hook(hook)
    try:
        yield
    except StopForward:
        pass
    finally:
        handle.remove()


@contextmanager
def _forwards_replaced(modules: list[torch.nn.Module], make: Callable[[int, Callable], Callable]) -> Iterator[None]:
    """Each module's ``forward`` replaced by make(index, original) (its hooks still run)."""
    saved = [module.__dict__.get("forward") for module in modules]     # a forward set on the instance, if any
    for index, module in enumerate(modules):
        module.forward = make(index, module.forward)
    try:
        yield
    finally:
        for module, forward in zip(modules, saved):
            if forward is None:
                del module.forward          # back to the class's forward
            else:
                module.forward = forward


@contextmanager
def recording_forwards(modules: list[torch.nn.Module]) -> Iterator[list]:
    """Record what each module's own forward returns (before its hooks) in the passes run
    inside; the list holds the last return value of each, in order."""
    returned: list = [None] * len(modules)

    def make(index, original):
        def forward(*args, **kwargs):
            returned[index] = original(*args, **kwargs)
            return returned[index]
        return forward
    with _forwards_replaced(modules, make):
        yield returned


@contextmanager
def replaying_forwards(modules: list[torch.nn.Module], returned: list) -> Iterator[None]:
    """Each module's forward returns its recorded value instead of computing (its forward
    hooks still act on that value): blocks whose inputs cannot change between passes."""
    with _forwards_replaced(modules, lambda index, _original: lambda *args, **kwargs: returned[index]):
        yield
