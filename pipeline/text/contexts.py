"""Cutting a document stream into fixed-length token contexts.

Documents are tokenized in order, joined by the tokenizer's separator and cut into pieces of
`context_len - 1` tokens, each opened by a BOS token. Context k is therefore a pure function of
the document order (source, split, seed) and k.
"""

from collections.abc import Iterable, Iterator

import numpy as np

from pipeline.errors import ConfigError

_DOCS_PER_BATCH = 256


def special_tokens(tokenizer) -> tuple[int, int]:
    """(BOS, separator) ids: causal LMs use BOS/EOS, BERT-style encoders CLS/SEP."""
    bos = _first_id(tokenizer, ("bos_token_id", "cls_token_id", "eos_token_id"))
    sep = _first_id(tokenizer, ("eos_token_id", "sep_token_id", "bos_token_id"))
    if bos is None or sep is None:
        raise ConfigError("model.name: the tokenizer has no BOS, CLS, EOS or SEP token to open and join contexts")
    return bos, sep


def _first_id(tokenizer, names: tuple[str, ...]) -> int | None:
    ids = [getattr(tokenizer, n, None) for n in names]
    return next((i for i in ids if i is not None), None)


def build_contexts(tokenizer, docs: Iterable[str], n_contexts: int, context_len: int, label: str) -> np.ndarray:
    """The first `n_contexts` contexts of the stream, int32 [n_contexts, context_len]."""
    bos, sep = special_tokens(tokenizer)
    body = context_len - 1
    out = np.empty((n_contexts, context_len), dtype=np.int32)
    out[:, 0] = bos
    pending: list[int] = []
    filled = 0
    for ids in _token_stream(tokenizer, docs):
        pending.extend(ids)
        pending.append(sep)
        while len(pending) >= body and filled < n_contexts:
            out[filled, 1:] = pending[:body]
            del pending[:body]
            filled += 1
        if filled == n_contexts:
            return out
    raise ConfigError(
        f"harvest.n_tokens: data set {label} holds only {filled} contexts of {context_len} tokens, "
        f"{n_contexts} were asked for"
    )


def _token_stream(tokenizer, docs: Iterable[str]) -> Iterator[list[int]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == _DOCS_PER_BATCH:
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
