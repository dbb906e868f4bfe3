"""Foundation-aware self-attention (FASA), gathered: the personalised rows also attend to the foundation
branch's keys inside the attribute mask, each with an additive logit bias omega.

FreeCure's formulation (paper Sec. 4.1; the specification's Sec. 1.6): for a personalised (PD) query row,
keys are [K_PD ; K_FD] (2N tokens) with logit bias 0 on the PD keys, +omega on FD keys inside the mask and
-inf on FD keys outside it. Dropping the -inf keys changes nothing (exp(-inf) = 0), so here only the m
in-mask FD keys are gathered: one SDPA over N + m keys per row, no [heads, N, 2N] logit matrix.

Only the conditional PD rows change when style_fidelity is 1 (FreeCure's default and F2D setting); with
style_fidelity s < 1 an unconditional PD row becomes (1 - s) * FASA + s * plain. Foundation rows and every
row FASA does not touch are returned bit for bit as `plain`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..errors import F2DError

# attention(q, k, v, heads, mask=...) -> [B, N, heads*dim], e.g. ComfyUI's attention_pytorch: q [B, N, H*D],
# k and v [B, M, H*D], mask a float bias [B, 1, M] broadcast over heads and queries.
AttentionFn = Callable[..., torch.Tensor]
# plain_rows(rows) -> the plain self-attention output [len(rows), N, heads*dim] of those rows (None: all rows).
PlainRowsFn = Callable[[torch.Tensor | None], torch.Tensor]
COND, UNCOND = 0, 1  # ComfyUI's cond_or_uncond values


class FasaLayoutError(F2DError, ValueError):
    """The rows given to FASA do not have the PD/FD pair layout it needs."""


def chunk_rows(batch: int, cond_or_uncond: Sequence[int], rows_per_chunk: int) -> int:
    """Rows per cond_or_uncond chunk (batch / chunks), checked against `rows_per_chunk`.

    Raises FasaLayoutError when the batch does not split into len(cond_or_uncond) chunks of rows_per_chunk.
    """
    chunks = len(cond_or_uncond)
    if chunks == 0 or batch % chunks or batch // chunks != rows_per_chunk:
        raise FasaLayoutError(
            f"FASA expected {len(cond_or_uncond)} chunk(s) of {rows_per_chunk} rows, got a batch of {batch} "
            f"(cond_or_uncond {list(cond_or_uncond)})."
        )
    return rows_per_chunk


def attend_with_foundation(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    foundation_keys: Sequence[torch.Tensor],
    foundation_values: Sequence[torch.Tensor],
    heads: int,
    omega: float,
    attention: AttentionFn,
) -> torch.Tensor:
    """Self-attention of P rows whose keys are extended by their own gathered foundation tokens.

    q, k, v: [P, N, heads*dim] (the PD rows' own projections). foundation_keys[i], foundation_values[i]:
    [m_i, heads*dim], m_i >= 1, the in-mask FD tokens of row i. Returns [P, N, heads*dim] in q's dtype:
    softmax([q k^T, q K_FD^T] / sqrt(dim) + [0, omega]) [v; V_FD] (omega added to the scaled logits, as SDPA adds
    its float mask and FreeCure its bias). Rows with fewer tokens than max(m_i) are padded with -inf bias (weight
    exactly 0; never a whole row, so no NaN in any dtype). One `attention` call for all P rows.
    """
    rows, n_tokens, width = q.shape
    m_max = max(int(t.shape[0]) for t in foundation_keys)
    keys = q.new_zeros((rows, n_tokens + m_max, width))
    values = q.new_zeros((rows, n_tokens + m_max, width))
    keys[:, :n_tokens] = k
    values[:, :n_tokens] = v
    bias = q.new_full((rows, 1, n_tokens + m_max), float("-inf"))
    bias[:, :, :n_tokens] = 0.0
    for i, (fk, fv) in enumerate(zip(foundation_keys, foundation_values, strict=True)):
        m = int(fk.shape[0])
        keys[i, n_tokens : n_tokens + m] = fk.to(q.dtype)
        values[i, n_tokens : n_tokens + m] = fv.to(q.dtype)
        bias[i, :, n_tokens : n_tokens + m] = omega
    return attention(q, keys, values, heads, mask=bias)


def _apply_rows(
    out: torch.Tensor,
    plain: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    targets: list[tuple[int, int, torch.Tensor, torch.Tensor]],
    heads: int,
    omega: float,
    style_fidelity: float,
    attention: AttentionFn,
) -> None:
    """Write FASA into `out` for targets (row, kind, foundation keys, values); rows with no token are skipped."""
    targets = [t for t in targets if t[2].shape[0] > 0]
    if not targets:
        return
    rows = torch.tensor([t[0] for t in targets], device=q.device)
    fasa = attend_with_foundation(
        q[rows], k[rows], v[rows], [t[2] for t in targets], [t[3] for t in targets], heads, omega, attention
    )
    for i, (row, kind, _, _) in enumerate(targets):
        if kind == UNCOND:
            out[row] = (1.0 - style_fidelity) * fasa[i] + style_fidelity * plain[row]
        else:
            out[row] = fasa[i]


def _changed_kinds(style_fidelity: float) -> set[int]:
    """The chunk kinds whose PD rows FASA changes: cond always, uncond only when style_fidelity < 1."""
    if not 0.0 <= style_fidelity <= 1.0:
        raise FasaLayoutError(f"style_fidelity must be in [0, 1], got {style_fidelity}.")
    return {COND} if style_fidelity == 1.0 else {COND, UNCOND}


def fasa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    cond_or_uncond: Sequence[int],
    pairs: int,
    mask_tokens: Sequence[torch.Tensor],
    omega: float,
    style_fidelity: float,
    attention: AttentionFn,
    plain: torch.Tensor | None = None,
) -> torch.Tensor:
    """FASA on a batch holding PD and FD rows (the straightforward layout, spec Sec. 5.3).

    q, k, v: [B, N, heads*dim]; B = len(cond_or_uncond) * 2 * pairs; chunk c holds rows
    [PD_0..PD_{k-1}, FD_0..FD_{k-1}] (PD_j = c*2k + j, FD_j = c*2k + k + j). mask_tokens[j]: int64 [m_j],
    the token indices (row-major over the layer's h x w) inside pair j's attribute mask. omega: additive
    logit bias of those FD keys (FreeCure's mask weight). style_fidelity in [0, 1]: 1 leaves uncond rows
    plain. attention: e.g. ComfyUI's attention_pytorch. plain: the plain self-attention output if
    already computed (else attention(q, k, v, heads)). Returns [B, N, heads*dim]; FD rows, untouched PD
    rows and pairs with an empty mask are `plain` bit for bit. Raises FasaLayoutError on a bad layout.
    """
    kinds = _changed_kinds(style_fidelity)
    b = chunk_rows(q.shape[0], cond_or_uncond, 2 * pairs)
    if len(mask_tokens) != pairs:
        raise FasaLayoutError(f"FASA got {len(mask_tokens)} masks for {pairs} PD/FD pairs.")
    if plain is None:
        plain = attention(q, k, v, heads)
    if omega == float("-inf"):  # exp(-inf) = 0: the FD keys carry no weight, exactly plain attention
        return plain
    targets = []
    for c, kind in enumerate(cond_or_uncond):
        if kind not in kinds:
            continue
        for j in range(pairs):
            pd, fd = c * b + j, c * b + pairs + j
            idx = mask_tokens[j].to(k.device)
            targets.append((pd, kind, k[fd, idx], v[fd, idx]))
    if not any(t[2].shape[0] for t in targets):
        return plain
    out = plain.clone()
    _apply_rows(out, plain, q, k, v, targets, heads, omega, style_fidelity, attention)
    return out


def fasa_attention_cached(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    cond_or_uncond: Sequence[int],
    foundation: Mapping[int, Sequence[tuple[torch.Tensor, torch.Tensor]]],
    omega: float,
    style_fidelity: float,
    attention: AttentionFn,
    plain: torch.Tensor | None = None,
    plain_rows: PlainRowsFn | None = None,
) -> torch.Tensor:
    """FASA on a batch of PD rows only, the FD keys and values coming from a cache of the foundation run.

    q, k, v: [B, N, heads*dim], B = len(cond_or_uncond) * pairs, chunk c = [PD_0..PD_{k-1}].
    foundation[c]: for chunk c (its index in cond_or_uncond) a list over pairs of (keys, values), each
    [m_j, heads*dim], the FD tokens inside pair j's mask at this layer and step (no entry: chunk left
    plain). plain: the plain output of every row, if already computed. plain_rows(rows): the plain output of
    the rows `rows` (int64 [r]; None: all rows, the whole batch as given), for a backend that computes each
    row on its own: then the rows FASA replaces (conditional ones) get no plain attention at all. Neither:
    attention(q, k, v, heads). Same result as `fasa_attention` on the full [PD, FD] batch; with no in-mask
    token anywhere, the plain output itself. Raises FasaLayoutError.
    """
    kinds = _changed_kinds(style_fidelity)
    chunks = len(cond_or_uncond)
    if chunks == 0 or q.shape[0] % chunks:
        raise FasaLayoutError(f"FASA got a batch of {q.shape[0]} for cond_or_uncond {list(cond_or_uncond)}.")
    b = q.shape[0] // chunks
    targets = []
    for c, kind in enumerate(cond_or_uncond):
        tokens = foundation.get(c)
        if kind not in kinds or tokens is None:
            continue
        if len(tokens) != b:
            raise FasaLayoutError(f"FASA: chunk {c} has {b} PD rows but the foundation cache {len(tokens)} pairs.")
        for j, (fk, fv) in enumerate(tokens):
            if fk.shape[0] > 0:
                targets.append((c * b + j, kind, fk.to(q.device), fv.to(q.device)))
    if plain is None and plain_rows is None:
        plain = attention(q, k, v, heads)
    if omega == float("-inf") or not targets:  # exp(-inf) = 0: the FD keys carry no weight
        return plain if plain is not None else plain_rows(None)
    if plain is not None:
        out = plain.clone()
        _apply_rows(out, plain, q, k, v, targets, heads, omega, style_fidelity, attention)
        return out
    replaced = {row for row, kind, _, _ in targets if kind == COND}
    kept = [row for row in range(q.shape[0]) if row not in replaced]
    if kept:
        part = plain_rows(torch.tensor(kept, device=q.device))
        out = part.new_empty((q.shape[0], *part.shape[1:]))
        out[kept] = part
    else:
        out = torch.empty_like(q)
    _apply_rows(out, out, q, k, v, targets, heads, omega, style_fidelity, attention)  # blends read kept rows
    return out
