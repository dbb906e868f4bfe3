"""Put S* into CLIP token chunks at the identifier, framework-free.

Chunks are ComfyUI's tokenizer output: `[[(token, weight, ...), ... 77], ...]`, one list per
77-token window. The official code replaces the hidden state after the embedding layer (token +
position embedding) at the identifier's two positions by S1*, S2*. An encoder that adds position
embeddings after splicing (ComfyUI) must therefore receive `S* - position_embedding[pos]` there.
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
    """(position, token id) of every integer, non-special token, in reading order across chunks."""
    special = set(special_tokens)
    return [
        ((c, i), int(entry[0]))
        for c, chunk in enumerate(chunks)
        for i, entry in enumerate(chunk)
        if isinstance(entry[0], Integral) and int(entry[0]) not in special
    ]


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


def _with_content(chunk: list[TokenEntry], content: list[TokenEntry], special: set[int]) -> list[TokenEntry]:
    """`chunk` with its content replaced: start token, content, end token, then padding to its length."""
    start, stop = _content_span(chunk, special)
    end = chunk[stop] if stop < len(chunk) else chunk[-1]
    pad = chunk[-1] if _is_special(chunk[-1], special) else end
    rebuilt = [*chunk[:start], *content, end]
    return rebuilt + [pad] * (len(chunk) - len(rebuilt))


def keep_identifiers_whole(
    chunks: TokenChunks, identifier_ids: Sequence[int], special_tokens: Iterable[int]
) -> TokenChunks:
    """Copy of `chunks` in which an identifier split by a 77-token window boundary moves whole into the
    next window, so that its words go through one CLIP pass (S2* attends to S1*, as in training).

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
        out[c] = _with_content(out[c], out[c][start:cut], special)
        while carried:
            if c + 1 == len(out):
                out.append(_with_content(out[c], [], special))
            c += 1
            start, stop = _content_span(out[c], special)
            content = carried + out[c][start:stop]
            room = len(out[c]) - start - 1  # the end token stays
            out[c], carried = _with_content(out[c], content[:room], special), content[room:]


def inject_s_star(
    chunks: TokenChunks,
    identifier_ids: Sequence[int],
    s_star: torch.Tensor,
    position_embedding: torch.Tensor,
    special_tokens: Iterable[int],
    identifier_text: str = DEFAULT_IDENTIFIER,
) -> TokenChunks:
    """Copy of `chunks` whose identifier tokens carry `S*[k] - position_embedding[pos]` (weights kept).

    s_star: [2, width]; position_embedding: [77, width]. Every occurrence is replaced; one split by a
    window boundary is first moved whole into the next window (`keep_identifiers_whole`).
    """
    if len(identifier_ids) != s_star.shape[0]:
        raise PromptError(
            f'The identifier "{identifier_text}" is {len(identifier_ids)} CLIP tokens, but S* has '
            f"{s_star.shape[0]} words: choose an identifier of exactly {s_star.shape[0]} tokens, "
            f'such as the official "{DEFAULT_IDENTIFIER}".'
        )
    special = {int(t) for t in special_tokens}
    chunks = keep_identifiers_whole(chunks, identifier_ids, special)
    occurrences = find_identifier(chunks, identifier_ids, special)
    if not occurrences:
        raise PromptError(
            f'The prompt does not contain the identifier "{identifier_text}". Write it where the '
            f'person goes, e.g. "a photo of {identifier_text} as a knight".'
        )
    out = [list(chunk) for chunk in chunks]
    s_star = s_star.float()  # not detached: training backpropagates through the injection
    positions = position_embedding.detach().to(s_star.device, torch.float32)
    for occurrence in occurrences:
        for word, (c, i) in enumerate(occurrence):
            entry = out[c][i]
            out[c][i] = (s_star[word] - positions[i], *entry[1:])
    return out
