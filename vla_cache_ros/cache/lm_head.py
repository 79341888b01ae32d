"""Greedy argmax over the vocabulary at a fraction of the LM head's cost, with the same tokens.

Greedy decoding needs only ``argmax_v f_v``, where ``f = W h`` is the float32 LM head (vocab x
hidden) applied to the final-norm hidden state. The head is the largest matrix a decode pass reads
on small decoders: on the project's miniature policy (hidden 128) its 32 064 rows hold 4.1 M
parameters against 0.8 M in the whole decoder, and profiling put it at 57 % of a decode pass.

The screen. A bfloat16 copy W' of the head (half the bytes, and oneDNN's bf16 matrix-vector
kernel) gives ``g = bf16(W' bf16(h))`` for every row. With u = 2^-8 (bfloat16's unit roundoff),
d = hidden and float32's accumulation bound d * 2^-24 (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., §3.1), each row's float32 logit f_v lies within

    E_v = 2 * [(2.01 u + 2.02 d 2^-24) ||w_v|| ||h|| + 1.01 u |g_v|]

of g_v (rounding of w and h to bf16, two float32 accumulations, rounding of the output to bf16;
the leading 2 is a safety factor). Every row that could hold the maximum of f satisfies
``g_v + E_v >= max_u (g_u - E_u)``; those few rows (usually one or two) are recomputed in float32
and their argmax taken, lowest index first as ``torch.argmax``. The candidates' float32 logits come
from the same weights through a smaller product, so they can differ from the full product's in the
last bits of the summation order; only two rows tied to within that rounding could come out the
other way round.

Logits: exact float32 at the recomputed rows, ``-inf`` at the rows the screen proved lower (not
computed). Heads that are not float32 (bfloat16 or float16 models, where no cheaper copy exists)
run the full head. The screen needs a second copy of the head in bfloat16 (half its size; 8 MB for
the miniature policy, 66 MB for the mid-size preset).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

UNIT_ROUNDOFF_BF16 = 2.0 ** -8
"""bfloat16 keeps 8 significant bits: round to nearest is within 2^-8 relative."""
ACCUMULATION_PER_TERM = 2.0 ** -24
"""float32 unit roundoff; a d-term float32 sum is within about d times it, relative to the sum of
absolute terms (Higham 2002, §3.1)."""
SAFETY = 2.0
"""Factor on the error bound, for kernels that round in more places than the analysis assumes."""
MAX_CANDIDATE_SHARE = 0.25
"""Above this share of rows within the bound, the full head is cheaper than recomputing them."""


@dataclass
class HeadOutput:
    """Greedy tokens and logits of R rows."""

    tokens: list[int]  # argmax per row, as the full float32 head gives it
    logits: torch.Tensor  # (R, vocab) float32; -inf at rows the screen proved lower
    screened: int  # rows decided by the screen (the others took the full head)
    recomputed: int  # float32 rows recomputed for the screened rows, summed


class ScreenedGreedyHead:
    """The float32 LM head's greedy argmax through a bfloat16 screen (see the module docstring).

    Args:
        lm_head: the model's output projection (vocab x hidden float32 weight, no bias).

    Raises:
        ValueError: a head with a bias or not in float32.
    """

    def __init__(self, lm_head: nn.Linear) -> None:
        weight = lm_head.weight.detach()
        if getattr(lm_head, "bias", None) is not None:
            raise ValueError("the screened greedy head needs an LM head without bias")
        if weight.dtype != torch.float32:
            raise ValueError(f"the screened greedy head needs a float32 LM head, not {weight.dtype}")
        self.weight = weight
        self.vocab, hidden = weight.shape
        self.screen_weight = weight.to(torch.bfloat16)
        # ||w_v|| rounded up, times the per-norm terms of E_v.
        norms = weight.double().norm(dim=1)
        u = UNIT_ROUNDOFF_BF16
        self.norm_term = (SAFETY * (2.01 * u + 2.02 * hidden * ACCUMULATION_PER_TERM) * norms).float()
        self.value_term = SAFETY * 1.01 * u
        self.rows = 0
        self.screened_rows = 0
        self.recomputed_rows = 0

    @torch.no_grad()
    def __call__(self, normed: torch.Tensor) -> HeadOutput:
        """Greedy tokens of ``normed`` (R, hidden) float32 final-norm hidden states."""
        rows = normed.reshape(-1, normed.shape[-1]).float()
        screen = F.linear(rows.to(torch.bfloat16), self.screen_weight).float()  # (R, vocab)
        error = self.norm_term * rows.norm(dim=1, keepdim=True) + self.value_term * screen.abs()
        floor = (screen - error).max(dim=1, keepdim=True).values
        possible = screen + error >= floor  # (R, vocab): rows that could hold the maximum
        logits = torch.full_like(screen, float("-inf"))
        tokens: list[int] = []
        screened = recomputed = 0
        for index in range(rows.shape[0]):
            candidates = possible[index].nonzero().flatten()
            if candidates.numel() > MAX_CANDIDATE_SHARE * self.vocab:
                logits[index] = F.linear(rows[index], self.weight)
                tokens.append(int(torch.argmax(logits[index])))
                continue
            exact = F.linear(rows[index], self.weight[candidates])
            logits[index, candidates] = exact
            tokens.append(int(candidates[torch.argmax(exact)]))
            screened += 1
            recomputed += int(candidates.numel())
        self.rows += len(tokens)
        self.screened_rows += screened
        self.recomputed_rows += recomputed
        return HeadOutput(tokens, logits, screened, recomputed)


_SHARED: "weakref.WeakKeyDictionary[nn.Module, ScreenedGreedyHead]" = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def shared_screened_head(lm_head: nn.Linear) -> ScreenedGreedyHead | None:
    """The screened head of ``lm_head``, built once per head and shared by every engine on it;
    None for a head it does not apply to (not float32, or with a bias). Like prepacked weights,
    a snapshot: weights changed in place afterwards would not reach it."""
    if lm_head.weight.dtype != torch.float32 or getattr(lm_head, "bias", None) is not None:
        return None
    with _SHARED_LOCK:
        head = _SHARED.get(lm_head)
        if head is None:
            head = _SHARED[lm_head] = ScreenedGreedyHead(lm_head)
        return head
