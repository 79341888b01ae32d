"""Greedy argmax over the vocabulary without a full LM-head pass, certified exact.

Greedy decoding needs only ``argmax_v w_v . h`` over the LM head's rows ``w_v`` (vocab x hidden).
A trained VLA puts that argmax on one of its 256 action tokens, yet the full head multiplies h by
all 32 064 rows: on the project's miniature policy (hidden 128) the head holds 4.1 M parameters
against 0.8 M in the whole decoder, so it is most of every memory-bound decode pass. This module
computes the candidate rows' logits exactly and proves, with a cheap bound, that no other row can
beat the best of them; where the proof fails it falls back to the full head.

The bound. Let P (k x hidden) hold orthonormal rows spanning the top-k right singular subspace
of the other rows W_O (computed once, from the eigenvectors of W_O^T W_O). Every other row splits
as ``w_j = P^T c_j + e_j`` with ``c_j = P w_j`` and ``e_j`` orthogonal to that subspace, so

    w_j . h = c_j . (P h) + e_j . h_perp <= c_j . (P h) + ||e_j|| ||h_perp||,   h_perp = h - P^T P h

by Cauchy-Schwarz. ``c_j . (P h)`` costs |O| x k multiply-adds instead of |O| x hidden. When
``max_j bound_j`` lies below the best candidate logit by more than a floating-point margin, the
argmax is that candidate: the token equals the full head's argmax (ties included: candidates keep
their vocabulary order, and every other row is strictly lower). The candidates' logits come from
the same weights through a separate matrix product, so they can differ from the full product's in
the last bits of the summation order; only a tie between two candidates to within that rounding
could decide differently.

Logits of a certified row are exact at the candidates and ``-inf`` elsewhere (not computed,
proven lower); a row that falls back has the full head's logits. The margin is relative
(``RELATIVE_MARGIN`` per dtype: a few units in the last place of a logit of that magnitude) plus
an absolute term for the summation error of a length-``hidden`` dot product.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

RELATIVE_MARGIN = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2.0 ** -6, torch.float16: 2.0 ** -9}
"""Relative safety margin of the certificate per LM-head dtype: the full head's logits are
rounded to the weights' dtype, so a bound must clear the best candidate by more than that
rounding (bfloat16 keeps 8 significant bits: 2^-8 relative; twice that is taken)."""

BACKOFF_AFTER = 16
"""Calls in a row without a certified row after which the bound is tried only now and then."""
BACKOFF_EVERY = 16
"""While backing off, one call in this many tries the bound."""


def subspace_rank(hidden: int) -> int:
    """The rank k of the bound's subspace for a head of width ``hidden``: hidden / 8, within [4, 64].

    The bound costs |O| x k against |O| x hidden for the full head, and a larger k leaves less
    of each row to the Cauchy-Schwarz term. hidden / 8 keeps the bound at about an eighth of the
    head's work; 64 caps it for wide models (OpenVLA-7B: 4096 -> 64, 1/64 of the head)."""
    return max(4, min(64, hidden // 8))


@dataclass
class HeadOutput:
    """Greedy tokens and logits of R rows."""

    tokens: list[int]  # argmax per row, as the full head would give it
    logits: torch.Tensor  # (R, vocab) float32; a certified row holds -inf outside the candidates
    certified: int  # rows whose argmax was proven without the full head


class CertifiedGreedyHead:
    """The LM head's greedy argmax with a proven shortcut over a candidate token range.

    Args:
        lm_head: the model's output projection (vocab x hidden weight, no bias).
        candidates: [low, high) token ids tried first (a VLA's action tokens).
        rank: the bound's subspace rank (default :func:`subspace_rank`).

    Raises:
        ValueError: an empty or out-of-range candidate range, a head with a bias, or a rank
            outside [1, hidden].
    """

    def __init__(self, lm_head: nn.Linear, candidates: tuple[int, int], rank: int | None = None) -> None:
        weight = lm_head.weight.detach()
        vocab, hidden = weight.shape
        low, high = candidates
        if not 0 <= low < high <= vocab:
            raise ValueError(f"candidate tokens [{low}, {high}) are not a non-empty range of the {vocab}-row head")
        if getattr(lm_head, "bias", None) is not None:
            raise ValueError("the certified greedy head needs an LM head without bias")
        rank = subspace_rank(hidden) if rank is None else int(rank)
        if not 1 <= rank <= hidden:
            raise ValueError(f"rank {rank} outside [1, {hidden}]")
        self.lm_head = lm_head
        self.low, self.high, self.vocab = low, high, vocab
        self.candidate_weight = weight[low:high]  # a view: no copy of the weights
        others = torch.cat([weight[:low], weight[high:]]).float()
        # The subspace: top-k eigenvectors of the (hidden x hidden) Gram matrix W_O^T W_O. Any
        # basis keeps the bound valid; a good one keeps it tight.
        _, vectors = torch.linalg.eigh((others.T @ others).double())
        self.basis = vectors[:, -rank:].T.float().contiguous()  # (k, hidden)
        # Coordinates and residual norms in float64 against the float32 basis the bound uses.
        basis = self.basis.double()
        coordinates, residual = [], []
        for chunk in others.split(4096):
            exact = chunk.double() @ basis.T
            coordinates.append(exact.float())
            residual.append((chunk.double() - exact @ basis).norm(dim=1))
        self.coordinates = torch.cat(coordinates)  # (|O|, k)
        # Rounded up so that the float32 copy still bounds the float64 value.
        self.residual = torch.cat(residual).float().nextafter(torch.tensor(float("inf")))
        self.relative = RELATIVE_MARGIN.get(weight.dtype, 1e-3)
        row_norm = float(weight.float().norm(dim=1).max())
        # Summation error of a float32 dot product over `hidden` terms (and of the basis not being
        # exactly orthonormal in float32): at most hidden * eps * ||w|| * ||h||.
        self._absolute_per_norm = 2 * hidden * torch.finfo(torch.float32).eps * row_norm
        self.rows = 0
        self.certified_rows = 0
        self.attempts = 0  # calls that computed the bound
        self._misses = 0  # consecutive calls whose rows all fell back
        self._skipped = 0  # calls since the last attempt while backing off

    def to_device(self, device: torch.device) -> None:
        """Move the bound's tensors (the candidate view follows the head's weights)."""
        self.basis, self.coordinates, self.residual = (
            t.to(device) for t in (self.basis, self.coordinates, self.residual))

    @torch.no_grad()
    def __call__(self, normed: torch.Tensor) -> HeadOutput:
        """Greedy tokens of ``normed`` (R, hidden): final-norm hidden states, any float dtype.

        After ``BACKOFF_AFTER`` calls in a row without a certified row (a model whose logits the
        bound cannot separate, e.g. isotropic random weights) only every ``BACKOFF_EVERY``-th call
        tries the bound; the others take the full head at once, so such a model pays at most
        1/``BACKOFF_EVERY`` of the bound's cost. One certified row ends the back-off."""
        rows = normed.reshape(-1, normed.shape[-1])
        if self._misses >= BACKOFF_AFTER:
            self._skipped += 1
            if self._skipped < BACKOFF_EVERY:
                logits = self.lm_head(rows).float()
                self.rows += rows.shape[0]
                return HeadOutput(logits.argmax(dim=1).tolist(), logits, 0)
            self._skipped = 0
        self.attempts += 1
        candidate = torch.nn.functional.linear(rows, self.candidate_weight).float()  # (R, C)
        best, best_index = candidate.max(dim=1)
        h = rows.float()
        projected = h @ self.basis.T  # (R, k)
        perpendicular = (h - projected @ self.basis).norm(dim=1, keepdim=True)  # (R, 1)
        bound = (projected @ self.coordinates.T + perpendicular * self.residual).max(dim=1).values
        margin = (self.relative * (best.abs() + bound.abs())
                  + self._absolute_per_norm * h.norm(dim=1))
        proven = bound + margin < best
        logits = torch.full((rows.shape[0], self.vocab), float("-inf"), device=rows.device)
        logits[:, self.low:self.high] = candidate
        tokens = (best_index + self.low).tolist()
        fallback = (~proven).nonzero().flatten().tolist()
        if fallback:
            full = self.lm_head(rows[fallback]).float()
            logits[fallback] = full
            for row, token in zip(fallback, full.argmax(dim=1).tolist()):
                tokens[row] = token
        self.rows += len(tokens)
        self.certified_rows += len(tokens) - len(fallback)
        self._misses = self._misses + 1 if len(fallback) == len(tokens) else 0
        return HeadOutput(tokens, logits, len(tokens) - len(fallback))


_SHARED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], CertifiedGreedyHead]]" = (
    weakref.WeakKeyDictionary())
_SHARED_LOCK = threading.Lock()


def shared_greedy_head(lm_head: nn.Linear, candidates: tuple[int, int]) -> CertifiedGreedyHead:
    """The certified head of ``lm_head`` over ``candidates``, built once per head and shared by
    every engine on it (the bound's tables: |O| x (k + 1) floats, about k / hidden of the head).
    Like prepacked weights, a snapshot: weights changed in place afterwards would not reach it."""
    key = (int(candidates[0]), int(candidates[1]))
    with _SHARED_LOCK:
        heads = _SHARED.setdefault(lm_head, {})
        if key not in heads:
            heads[key] = CertifiedGreedyHead(lm_head, key)
        return heads[key]
