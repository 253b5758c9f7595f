"""A T5-compatible tokenizer built locally, and the check that refuses degenerate tokenizers.

mimic-video's random-weight Cosmos wrapper asks the Hub for google-t5/t5-small; offline,
transformers silently returns a 104-token tokenizer that maps every word to <unk>, so distinct
prompts collapse to identical ids. The `builtin` tokenizer needs no Hub: a Unigram vocabulary of
printable ASCII characters (with and without the word-start marker), so every ASCII prompt
tokenizes to distinct, known pieces. Ids follow T5: pad=0, eos=1, unk=2.
"""
from __future__ import annotations

import string

_CHARS = string.ascii_letters + string.digits + string.punctuation


def builtin_tokenizer():
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in _CHARS] + [("\u2581" + c, -2.5) for c in _CHARS]
    return T5TokenizerFast(vocab=vocab)


def load_tokenizer(spec, snapshot=None):
    """'builtin', or a Hub tokenizer repo loaded from its verified local snapshot folder (never by repo name)."""
    if spec == "builtin":
        return builtin_tokenizer()
    if isinstance(spec, dict) and snapshot is not None:
        from transformers import T5TokenizerFast

        return T5TokenizerFast.from_pretrained(str(snapshot))
    raise ValueError(f"tokenizer {spec!r} needs a prefetched snapshot; allowed: builtin or a Hub repo")


def tokenizer_problems(tokenizer, prompts: list[str], max_unknown_fraction: float = 0.5) -> list[str]:
    """Why `tokenizer` cannot tell `prompts` apart (empty list: it can): distinct prompts with
    identical ids, or a prompt most of whose words contain the unknown token."""
    ids = [tuple(tokenizer(p).input_ids) for p in prompts]
    problems = []
    if len(set(ids)) < len(set(prompts)):
        same = [p for p, i in zip(prompts, ids) if ids.count(i) > 1]
        problems.append(f"distinct prompts map to identical token ids: {same}")
    unk = tokenizer.unk_token_id
    for prompt in prompts:
        words = prompt.split()
        unknown = [w for w in words if unk in tokenizer(w, add_special_tokens=False).input_ids]
        if len(unknown) > max_unknown_fraction * len(words):
            problems.append(f"prompt {prompt!r}: {len(unknown)} of {len(words)} words map to the unknown token")
    return problems
