"""Durable edit state: the running sums per edited layer, in generation files.

A commit writes the new sums to a temporary file, fsyncs it, renames it into place,
fsyncs the folder, and only then records the generation in the ledger in one
transaction. On open, files newer than the ledger's generation (a crash between the
rename and the transaction) are removed, so the state is always the old one or the
new one, never a mix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from assistant.editing.closed_form import alphaedit_delta, d4s_delta, memit_delta, null_space_delta, null_space_projector, \
    outer_sums
from assistant.editing.gate import EditColumns
from assistant.errors import ConfigError, EditRejected, StateError

_GENERATION_FILE = re.compile(r"gen-(\d{6})\.safetensors$")


class D4S:
    """Running sums S_l = sum r k^T and T_l = sum k k^T; the offset is solved from them, so an
    edit's terms can be subtracted again (exact retraction and supersede). Its prior is the
    keys' second moment C, weighted by lambda. G_l, the gated edits' share of S_l (chat facts:
    ``gated=True``), gives the part of the offset that the gate acts on: the solve is linear in
    S, so offset(S) = offset(S - G) + offset(G). GK_l and GR_l keep the gated edits' columns
    (G = GR GK^T), so the gate can weigh each edit's term apart (``gated_columns``)."""
    name = "d4s"
    one_batch = False          # batches of [editing] batch_size
    removable = True           # retract and supersede take an edit's terms out again

    def prior(self, C: torch.Tensor, editing) -> torch.Tensor:
        """What the solves need of a layer's C (computed once per layer by the editor)."""
        return C

    def layout(self, layer: int, d_out: int, d_in: int) -> dict[str, torch.Tensor]:
        return {f"S.{layer}": torch.zeros(d_out, d_in, dtype=torch.float64),
                f"T.{layer}": torch.zeros(d_in, d_in, dtype=torch.float64),
                f"G.{layer}": torch.zeros(d_out, d_in, dtype=torch.float64),
                f"GK.{layer}": torch.zeros(d_in, 0, dtype=torch.float64),
                f"GR.{layer}": torch.zeros(d_out, 0, dtype=torch.float64)}

    def gated_names(self, layer: int) -> list[str]:
        return [f"G.{layer}", f"GK.{layer}", f"GR.{layer}"]

    def add_batch(self, sums: "EditSums", layer: int, K: torch.Tensor, R: torch.Tensor, prior, lam: float,
                  gated: bool = False) -> None:
        sums.add(layer, K, R, gated=gated)

    def raise_residuals(self, sums: "EditSums", layer: int, K: torch.Tensor, E: torch.Tensor, prior,
                        lam: float, gated: bool = False) -> None:
        sums.raise_residuals(layer, K, E, gated)

    def remove(self, sums: "EditSums", layer: int, K: torch.Tensor, R: torch.Tensor, gated: bool = False) -> None:
        sums.add(layer, K, R, sign=-1.0, gated=gated)

    def offset(self, sums: "EditSums", layer: int, prior, lam: float) -> torch.Tensor:
        return self._solved(sums.tensors[f"S.{layer}"], sums, layer, prior, lam)

    def gated_offset(self, sums: "EditSums", layer: int, prior, lam: float) -> torch.Tensor:
        return self._solved(sums.tensors[f"G.{layer}"], sums, layer, prior, lam)

    def gated_columns(self, sums: "EditSums", layer: int, prior, lam: float) -> EditColumns:
        """The gated offset as one column per gated key: R M^T, where M^T is the method's solve
        of GK^T (d4s: M = (lam C + T)^-1 GK), as the offset is its solve of G = GR GK^T."""
        M = self._solved(sums.tensors[f"GK.{layer}"].T, sums, layer, prior, lam).T
        return EditColumns(M, sums.tensors[f"GR.{layer}"])

    def fill_gated_share(self, sums: "EditSums", layer: int, chat_vectors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """An older state without G or its columns: rebuild them from the active chat edits'
        (K, R) in the ledger."""
        d_out, d_in = sums.tensors[f"S.{layer}"].shape
        K = torch.cat([torch.zeros(d_in, 0, dtype=torch.float64)] + [K.double() for K, _ in chat_vectors], dim=1)
        R = torch.cat([torch.zeros(d_out, 0, dtype=torch.float64)] + [R.double() for _, R in chat_vectors], dim=1)
        sums.tensors[f"GK.{layer}"], sums.tensors[f"GR.{layer}"] = K, R
        if f"G.{layer}" not in sums.tensors:         # a state that has G keeps it bit for bit
            sums.tensors[f"G.{layer}"] = R @ K.T

    def _solved(self, S: torch.Tensor, sums: "EditSums", layer: int, prior, lam: float) -> torch.Tensor:
        return torch.zeros_like(S) if not S.any() else self.solve(S, sums.tensors[f"T.{layer}"], prior, lam)

    def solve(self, S: torch.Tensor, T: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
        return d4s_delta(S, T, C, lam)


@dataclass(frozen=True)
class NullSpace:
    """A layer's prior for the null-space methods: the projector onto the directions of C
    that the edits may change, and the ridge alpha."""
    P: torch.Tensor
    alpha: float


def null_space_prior(C: torch.Tensor, editing) -> NullSpace:
    return NullSpace(null_space_projector(C, editing.null_space_keep), editing.null_space_alpha)


class NullSpaceD4S(D4S):
    """D4S's running sums solved in the null space of the preserved keys (AlphaEdit's
    projection): Delta = S P (T P + alpha I)^-1. The sums are D4S's, so retraction stays exact
    and a rebuild bit-identical; only the solve differs."""
    name = "d4s-null"

    def prior(self, C: torch.Tensor, editing) -> NullSpace:
        return null_space_prior(C, editing)

    def solve(self, S: torch.Tensor, T: torch.Tensor, prior: NullSpace, lam: float) -> torch.Tensor:
        return null_space_delta(S, T, prior.P, prior.alpha)


class Stacked:
    """The sequential methods' durable tensors: each batch's Delta_l stacked onto the weights
    (``delta``), and the gated edits' share of it (``G``: chat facts), which the gate acts
    on. A batch's Delta mixes its facts and later keys were measured on it, so no edit can be
    taken out again."""
    removable = False

    def layout(self, layer: int, d_out: int, d_in: int) -> dict[str, torch.Tensor]:
        return {f"delta.{layer}": torch.zeros(d_out, d_in, dtype=torch.float64),
                f"G.{layer}": torch.zeros(d_out, d_in, dtype=torch.float64)}

    def remove(self, sums: "EditSums", layer: int, K: torch.Tensor, R: torch.Tensor, gated: bool = False) -> None:
        raise EditRejected(f"{self.name} cannot take an edit out of the weights; exact retraction needs d4s or d4s-null")

    def offset(self, sums: "EditSums", layer: int, prior, lam: float) -> torch.Tensor:
        return sums.tensors[f"delta.{layer}"]

    def gated_offset(self, sums: "EditSums", layer: int, prior, lam: float) -> torch.Tensor:
        return sums.tensors[f"G.{layer}"]

    def gated_names(self, layer: int) -> list[str]:
        return [f"G.{layer}"]

    def gated_columns(self, sums: "EditSums", layer: int, prior, lam: float) -> None:
        """None: a batch's Delta mixes its facts, so no edit's term is kept apart."""
        return None

    def fill_gated_share(self, sums: "EditSums", layer: int, chat_vectors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """An older state without the gated share kept all of its change behind the gate; it still does."""
        sums.tensors[f"G.{layer}"] = sums.tensors[f"delta.{layer}"].clone()


class StackedMemit(Stacked):
    """MEMIT's Delta_l per batch, solved at once and stacked."""
    def prior(self, C: torch.Tensor, editing) -> torch.Tensor:
        return C

    def __init__(self, name: str, one_batch: bool):
        self.name, self.one_batch = name, one_batch     # memit: every fact of a call in one batch

    def add_batch(self, sums: "EditSums", layer: int, K: torch.Tensor, R: torch.Tensor, C, lam: float,
                  gated: bool = False) -> None:
        sums.stack(layer, memit_delta(K, R, C, lam), gated)

    def raise_residuals(self, sums: "EditSums", layer: int, K: torch.Tensor, E: torch.Tensor, C, lam: float,
                        gated: bool = False) -> None:
        sums.stack(layer, memit_delta(K, E, C, lam), gated)


class AlphaEdit(Stacked):
    """AlphaEdit in its published sequential form: each batch's update, projected onto the
    null space of the preserved keys and regularised by the earlier batches' keys, is added
    to the current weights. Keeps the stacked Delta and the keys' sum T = sum k k^T; like
    memit-seq, no edit can be taken out again."""
    name = "alphaedit"
    one_batch = False

    def prior(self, C: torch.Tensor, editing) -> NullSpace:
        return null_space_prior(C, editing)

    def layout(self, layer: int, d_out: int, d_in: int) -> dict[str, torch.Tensor]:
        return {**super().layout(layer, d_out, d_in), f"T.{layer}": torch.zeros(d_in, d_in, dtype=torch.float64)}

    def add_batch(self, sums: "EditSums", layer: int, K: torch.Tensor, R: torch.Tensor, prior: NullSpace,
                  lam: float, gated: bool = False) -> None:
        T = sums.tensors[f"T.{layer}"]
        sums.stack(layer, alphaedit_delta(K, R, T, prior.P, prior.alpha), gated)
        T += K @ K.T

    def raise_residuals(self, sums: "EditSums", layer: int, K: torch.Tensor, E: torch.Tensor, prior: NullSpace,
                        lam: float, gated: bool = False) -> None:
        """A refinement round: the keys are already in T."""
        sums.stack(layer, null_space_delta(E @ K.T, sums.tensors[f"T.{layer}"], prior.P, prior.alpha), gated)


STRATEGIES = {s.name: s for s in (D4S(), NullSpaceD4S(), StackedMemit("memit-seq", one_batch=False), AlphaEdit(),
                                   StackedMemit("memit", one_batch=True))}


def strategy_for(method: str):
    """The strategy object of an editing method (assistant.config.METHODS)."""
    if method not in STRATEGIES:
        raise ConfigError(f"method {method!r} is unknown; use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[method]


class EditSums:
    """The durable tensors of one state, laid out by its method's strategy (D4S: S and T per
    layer; the memit methods: the stacked Delta per layer). All float64 on the CPU."""

    def __init__(self, method: str, tensors: dict[str, torch.Tensor] | None = None):
        self.strategy = strategy_for(method)
        self.tensors = tensors or {}

    @property
    def method(self) -> str:
        return self.strategy.name

    @classmethod
    def empty(cls, method: str, shapes: dict[int, tuple[int, int]]) -> "EditSums":
        strategy = strategy_for(method)
        tensors = {}
        for layer, (d_out, d_in) in shapes.items():
            tensors.update(strategy.layout(layer, d_out, d_in))
        return cls(method, tensors)

    def copy(self) -> "EditSums":
        return EditSums(self.method, {name: t.clone() for name, t in self.tensors.items()})

    def add(self, layer: int, K: torch.Tensor, R: torch.Tensor, sign: float = 1.0, gated: bool = False) -> None:
        """D4S: add (or, with sign -1, remove) the batch's terms R K^T and K K^T; a gated
        batch's R K^T goes into G too, and its columns are appended to (or taken out of) GK, GR."""
        RK, KK = outer_sums(K, R)
        self.tensors[f"S.{layer}"] += sign * RK
        self.tensors[f"T.{layer}"] += sign * KK
        if gated:
            self.tensors[f"G.{layer}"] += sign * RK
            if sign > 0:
                self._append_columns(layer, K, R)
            else:
                self._remove_columns(layer, K, R)

    def raise_residuals(self, layer: int, K: torch.Tensor, E: torch.Tensor, gated: bool = False) -> None:
        """D4S: edits whose keys K are already in T ask for E more at those keys: S += E K^T.
        Gated, each key's latest gated column gets its e too."""
        EK = E @ K.T
        self.tensors[f"S.{layer}"] += EK
        if gated:
            self.tensors[f"G.{layer}"] += EK
            GR = self.tensors[f"GR.{layer}"]
            for j, e in zip(self._columns_of(layer, K, latest=True), E.double().T):
                GR[:, j] += e

    def _columns_of(self, layer: int, K: torch.Tensor, R: torch.Tensor | None = None, latest: bool = False) -> list[int]:
        """The gated columns holding K's columns (and R's, when given), one each, never one twice:
        the first match, or the latest (a refinement raises the batch just added)."""
        GK, GR = self.tensors[f"GK.{layer}"], self.tensors[f"GR.{layer}"]
        free = torch.ones(GK.shape[1], dtype=torch.bool)
        found = []
        for c, k in enumerate(K.double().T):
            match = free & (GK == k[:, None]).all(dim=0)
            if R is not None:
                match &= (GR == R.double()[:, c:c + 1]).all(dim=0)
            where = match.nonzero()[:, 0]
            if not len(where):
                raise StateError(f"layer {layer}: an edit's key is not among the gated columns; the state's sums "
                                 "and ledger disagree")
            j = int(where[-1] if latest else where[0])
            free[j] = False
            found.append(j)
        return found

    def _append_columns(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> None:
        for name, columns in ((f"GK.{layer}", K), (f"GR.{layer}", R)):
            self.tensors[name] = torch.cat([self.tensors[name], columns.double()], dim=1)

    def _remove_columns(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> None:
        """Take an edit's columns (exactly as added, raised residuals included) out of GK, GR."""
        keep = torch.ones(self.tensors[f"GK.{layer}"].shape[1], dtype=torch.bool)
        keep[self._columns_of(layer, K, R)] = False
        for name in (f"GK.{layer}", f"GR.{layer}"):
            self.tensors[name] = self.tensors[name][:, keep]

    def stack(self, layer: int, delta: torch.Tensor, gated: bool = False) -> None:
        """memit methods: add a batch's Delta on top of the edited weights (and to the gated share)."""
        self.tensors[f"delta.{layer}"] += delta
        if gated:
            self.tensors[f"G.{layer}"] += delta

    def T(self, layer: int) -> torch.Tensor | None:
        """The sum of the keys' outer products so far (None for the memit methods)."""
        return self.tensors.get(f"T.{layer}")

    def offset(self, layer: int, prior, lam: float) -> torch.Tensor:
        """W_l - W0_l in float64, given the layer's prior (the strategy's view of C)."""
        return self.strategy.offset(self, layer, prior, lam)

    def gated_offset(self, layer: int, prior, lam: float) -> torch.Tensor:
        """The gated edits' part of ``offset`` (what the gate keeps or drops per token)."""
        return self.strategy.gated_offset(self, layer, prior, lam)

    def gated_columns(self, layer: int, prior, lam: float) -> EditColumns | None:
        """The gated offset as the gated edits' columns (for the gate edit by edit), or None
        where the method keeps no edit's term apart."""
        return self.strategy.gated_columns(self, layer, prior, lam)

    def lacks_gated_share(self, layer: int) -> bool:
        """True for a state written before the gated share (or its columns) was kept (the
        editor fills it on open)."""
        return any(name not in self.tensors for name in self.strategy.gated_names(layer))


def edited_weight(W0: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """W0 + offset, computed in float64 and cast once to W0's dtype."""
    return (W0.double() + offset).to(W0.dtype)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_generation(folder: Path, generation: int, sums: EditSums) -> str:
    """Write the sums of a generation durably; returns the file name."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"gen-{generation:06d}.safetensors"
    temporary = folder / f".{name}.tmp"
    save_file({k: v.contiguous() for k, v in sums.tensors.items()}, str(temporary), metadata={"method": sums.method})
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, folder / name)
    _fsync_dir(folder)
    return name


def read_generation(folder: Path, name: str, method: str) -> EditSums:
    return EditSums(method, load_file(str(folder / name)))


def remove_other_generations(folder: Path, keep: str | None) -> None:
    """Drop sums files other than the committed one (older ones, or a crash's leftovers)."""
    if not folder.exists():
        return
    for path in folder.iterdir():
        if path.name != keep and (_GENERATION_FILE.match(path.name) or path.name.endswith(".tmp")):
            path.unlink()
