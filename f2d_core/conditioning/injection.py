"""Put S* into CLIP token chunks at the identifier, framework-free.

Chunks are ComfyUI's tokenizer output: `[[(token, weight, ...), ... 77], ...]`, one list per
77-token window, one list of windows per text tower (`{"l": ...}` for SD1.x, `{"g": ..., "l": ...}` for SDXL).
The official code replaces the hidden state after the embedding layer (token + position embedding) at the
identifier's two positions by S1*, S2*. An encoder that adds position embeddings after splicing (ComfyUI)
must therefore receive `S* - position_embedding[pos]` there (SD1.x). SDXL's S* is in token-embedding space
(shared docs sdxl.md D2): the entry is S* itself, exactly as a textual-inversion vector.

A window's content runs from after its start token to its first end token; what follows is padding. SD1.x
pads with the end token; SDXL's bigG tokenizer pads with 0, which is also a real vocabulary entry ("!"
inside a punctuation run) that may appear as content (sdxl.md 1.2, 1.9.2), so the pad token is given
explicitly (`pad_token`) and never treated as special.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral

import torch

from ..errors import PromptError

DEFAULT_IDENTIFIER = "f l"
TokenEntry = tuple
TokenChunks = list[list[TokenEntry]]
Position = tuple[int, int]  # (chunk index, index inside the chunk)


def _content_positions(chunks: TokenChunks, special_tokens: Iterable[int]) -> list[tuple[Position, int]]:
    """(position, token id) of every integer content token (inside each window's content span), in reading
    order across chunks."""
    special = set(special_tokens)
    out = []
    for c, chunk in enumerate(chunks):
        start, stop = _content_span(chunk, special)
        out += [((c, i), int(chunk[i][0])) for i in range(start, stop) if isinstance(chunk[i][0], Integral)]
    return out


def find_identifier(
    chunks: TokenChunks, identifier_ids: Sequence[int], special_tokens: Iterable[int]
) -> list[list[Position]]:
    """Each occurrence of the identifier's token sequence, as one position per identifier token.

    Matching runs over the content tokens of all chunks, so an identifier split by a chunk
    boundary ("f" ending one window, "l" starting the next) is found too.
    """
    stream = _content_positions(chunks, special_tokens)
    ids = [int(t) for t in identifier_ids]
    n = len(ids)
    found, i = [], 0
    while i + n <= len(stream):
        if [tok for _, tok in stream[i : i + n]] == ids:
            found.append([pos for pos, _ in stream[i : i + n]])
            i += n
        else:
            i += 1
    return found


def _is_special(entry: TokenEntry, special: set[int]) -> bool:
    return isinstance(entry[0], Integral) and int(entry[0]) in special


def _content_span(chunk: list[TokenEntry], special: set[int]) -> tuple[int, int]:
    """[start, stop) of a chunk's content: after its leading start token, up to its end token."""
    start = 1 if chunk and _is_special(chunk[0], special) else 0
    stop = next((i for i in range(start, len(chunk)) if _is_special(chunk[i], special)), len(chunk))
    return start, stop


def _with_content(
    chunk: list[TokenEntry], content: list[TokenEntry], special: set[int], pad_token: int | None = None
) -> list[TokenEntry]:
    """`chunk` with its content replaced: start token, content, end token, then padding to its length.

    Padding is `pad_token` when given (SDXL's bigG: 0), else the chunk's trailing special token or its end token.
    """
    start, stop = _content_span(chunk, special)
    end = chunk[stop] if stop < len(chunk) else chunk[-1]
    if pad_token is not None:
        pad = (pad_token, *end[1:])
    else:
        pad = chunk[-1] if _is_special(chunk[-1], special) else end
    rebuilt = [*chunk[:start], *content, end]
    return rebuilt + [pad] * (len(chunk) - len(rebuilt))


def keep_identifiers_whole(
    chunks: TokenChunks, identifier_ids: Sequence[int], special_tokens: Iterable[int], pad_token: int | None = None
) -> TokenChunks:
    """Copy of `chunks` in which an identifier split by a 77-token window boundary moves whole into the
    next window, so that its words go through one CLIP pass (S2* attends to S1*, as in training).
    `pad_token`: the tower's pad token when it is not one of `special_tokens` (SDXL's bigG pads with 0).

    The first window ends early (end token, padding); content pushed past the end of the next window
    moves on to the one after it (a new window at the end if needed), as ComfyUI's tokenizer carries a
    word that does not fit.
    """
    special = {int(t) for t in special_tokens}
    out = [list(chunk) for chunk in chunks]
    while True:
        split = next((o for o in find_identifier(out, identifier_ids, special) if o[0][0] != o[-1][0]), None)
        if split is None:
            return out
        c, cut = split[0]
        start, stop = _content_span(out[c], special)
        carried = out[c][cut:stop]
        out[c] = _with_content(out[c], out[c][start:cut], special, pad_token)
        while carried:
            if c + 1 == len(out):
                out.append(_with_content(out[c], [], special, pad_token))
            c += 1
            start, stop = _content_span(out[c], special)
            content = carried + out[c][start:stop]
            room = len(out[c]) - start - 1  # the end token stays
            out[c], carried = _with_content(out[c], content[:room], special, pad_token), content[room:]


def inject_s_star(
    chunks: TokenChunks,
    identifier_ids: Sequence[int],
    s_star: torch.Tensor,
    position_embedding: torch.Tensor | None,
    special_tokens: Iterable[int],
    identifier_text: str = DEFAULT_IDENTIFIER,
    pad_token: int | None = None,
) -> TokenChunks:
    """Copy of `chunks` whose identifier tokens carry `S*[k] - position_embedding[pos]` (weights kept).

    s_star: [2, width]; position_embedding: [77, width] (SD1.x, official "token + position" S*), or None for
    S* in token-embedding space (SDXL: the entry is `S*[k]` itself). Every occurrence is replaced; one split
    by a window boundary is first moved whole into the next window (`keep_identifiers_whole`). `pad_token`
    as in `keep_identifiers_whole`. Raises PromptError when the identifier is missing or not len(S*) tokens.
    """
    if len(identifier_ids) != s_star.shape[0]:
        raise PromptError(
            f'The identifier "{identifier_text}" is {len(identifier_ids)} CLIP tokens, but S* has '
            f"{s_star.shape[0]} words: choose an identifier of exactly {s_star.shape[0]} tokens, "
            f'such as the official "{DEFAULT_IDENTIFIER}".'
        )
    special = {int(t) for t in special_tokens}
    chunks = keep_identifiers_whole(chunks, identifier_ids, special, pad_token)
    occurrences = find_identifier(chunks, identifier_ids, special)
    if not occurrences:
        raise PromptError(
            f'The prompt does not contain the identifier "{identifier_text}". Write it where the '
            f'person goes, e.g. "a photo of {identifier_text} as a knight".'
        )
    out = [list(chunk) for chunk in chunks]
    s_star = s_star.float()  # not detached: training backpropagates through the injection
    if position_embedding is None:
        for occurrence in occurrences:
            for word, (c, i) in enumerate(occurrence):
                out[c][i] = (s_star[word], *out[c][i][1:])
        return out
    positions = position_embedding.detach().to(s_star.device, torch.float32)
    for occurrence in occurrences:
        for word, (c, i) in enumerate(occurrence):
            entry = out[c][i]
            out[c][i] = (s_star[word] - positions[i], *entry[1:])
    return out


def equal_chunk_counts(tokens: dict[str, TokenChunks], empty: dict[str, list[TokenEntry]]) -> dict[str, TokenChunks]:
    """`tokens` with every tower's list padded to the longest one with that tower's `empty` window
    (`clip.tokenize("")[tower][0]`), as CLIPTextEncodeSDXL does: SDXL cuts both towers to the shorter one
    (comfy/sdxl_clip.py), so a window moved by `keep_identifiers_whole` in one tower only would be lost."""
    longest = max(len(chunks) for chunks in tokens.values())
    return {t: chunks + [list(empty[t]) for _ in range(longest - len(chunks))] for t, chunks in tokens.items()}
