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


def inject_s_star(
    chunks: TokenChunks,
    identifier_ids: Sequence[int],
    s_star: torch.Tensor,
    position_embedding: torch.Tensor,
    special_tokens: Iterable[int],
    identifier_text: str = DEFAULT_IDENTIFIER,
) -> TokenChunks:
    """Copy of `chunks` whose identifier tokens carry `S*[k] - position_embedding[pos]` (weights kept).

    s_star: [2, width]; position_embedding: [77, width]. Every occurrence is replaced.
    """
    if len(identifier_ids) != s_star.shape[0]:
        raise PromptError(
            f'The identifier "{identifier_text}" is {len(identifier_ids)} CLIP tokens, but S* has '
            f"{s_star.shape[0]} words: choose an identifier of exactly {s_star.shape[0]} tokens, "
            f'such as the official "{DEFAULT_IDENTIFIER}".'
        )
    occurrences = find_identifier(chunks, identifier_ids, special_tokens)
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
