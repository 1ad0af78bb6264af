"""Write a Llama-architecture GGUF with random F16 weights, for measuring a GPU server's throughput.

Random weights in a real model's shape cost the GPU what the real model costs (the same matrix products, the
same KV cache); only the text they produce is meaningless. The tokenizer (vocabulary, merges, special tokens,
chat template) is copied from a small "tokenizer-only" GGUF, made once from any Llama-family GGUF:

    python3 make_random_gguf.py --tokenizer-only SmolLM2-135M-Instruct.Q4_1.gguf tokenizer.gguf
    python3 make_random_gguf.py --tokenizer tokenizer.gguf --out /tmp/random-1b.gguf  # Llama-3.2-1B-like
    python3 make_random_gguf.py --tokenizer tokenizer.gguf --out /tmp/tiny.gguf --shape tiny  # a CPU check

Needs numpy and llama.cpp's ``gguf`` package (gguf-py); with ``--gguf-py DIR`` (or ``.gpu/gguf-py`` in the
checkout) it is taken from source. Weights are uniform with standard deviation ``--std`` (0.02; the blocks'
output projections, attn_output and ffn_down, 20 times less, so that the residual stream stays close to the
input embedding), norms are 1, so activations stay finite. Tensors are views into one random pool (no
per-weight random draws): a 1B model is written in seconds.

How the model answers (``--mode``), under a server's JSON-schema grammar and greedy sampling:

- ``plain``: nothing arranged. The greedy pick is almost never a token the grammar allows, so llama.cpp takes
  its slow path on every token (the grammar applied to the whole vocabulary, on the server's one sampling
  thread), and the grammar's optional whitespace lets answers run to ``max_tokens`` and be cut off.
- ``compact``: whitespace-only tokens are suppressed, so answers end, but still on the slow path.
- ``scripted`` (default): the model is a bigram machine that answers ``--answer`` (default
  ``{\n   "sentiment": "negative"}`` in 13 tokens, the end token included) token by token and then ends, as a
  trained model answers in ~14 tokens whose greedy pick the grammar accepts at once. Every input embedding
  carries a constant in dimension 0; the answer's tokens carry one more dimension each, which raises the logit
  of the answer's next token (its output row has a 1 there); the first answer token gets a smaller constant
  boost, whitespace-only tokens a large penalty. The compute per token is the model's shape alone; only the
  logits are arranged. Needs a separate output matrix (``--untied`` is implied; one vocab x hidden product per
  token either way).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# hidden, layers, heads, kv heads, ffn, training context, rope base: Llama 3.x shapes (the vocabulary comes
# from the tokenizer GGUF unless --vocab-pad raises it)
SHAPES: dict[str, tuple[int, int, int, int, int, int, float]] = {
    "tiny": (128, 2, 2, 1, 256, 8192, 10000.0),  # head dim 64, for a CPU check
    "1b": (2048, 16, 32, 8, 8192, 131072, 500000.0),  # Llama-3.2-1B
    "3b": (3072, 28, 24, 8, 8192, 131072, 500000.0),  # Llama-3.2-3B
    "8b": (4096, 32, 32, 8, 14336, 131072, 500000.0),  # Llama-3.1-8B
}

TOKEN_TYPE_NORMAL = 1  # llama.cpp's LLAMA_TOKEN_TYPE_NORMAL
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6
EMBEDDING_CONSTANT = 16.0  # dimension 0 of every input embedding, and an answer token's own dimension
FIRST_TOKEN_BOOST = 0.5  # output row of the answer's first token, dimension 0
WHITESPACE_PENALTY = -1.0  # output rows of whitespace-only tokens, dimension 0
OUTPUT_PROJECTION_SCALE = 0.05  # attn_output and ffn_down: std x this

# {\n   "sentiment": "negative"}: 12 distinct SmolLM2 tokens and the end token, 13 in all. SmolLM2-135M itself
# answers the sentiment task in 8 ({"sentiment": "positive"}) or 17 tokens (the same, pretty-printed), 14 on
# average over the sample (BENCHMARKS.md); none of these tokens is the prompt's last ("\n" after "assistant").
DEFAULT_ANSWER = '{|\n   |"|s|ent|iment|":| "|n|eg|ative|"}'

Fields = list[tuple[str, Any, Any, Any]]


def import_gguf(gguf_py: Path | None) -> Any:
    try:
        import gguf  # type: ignore[import-not-found]
    except ImportError:
        for path in (gguf_py, REPO / ".gpu" / "gguf-py"):
            if path is not None and (path / "gguf" / "__init__.py").exists():
                sys.path.insert(0, str(path))
                break
        import gguf
    return gguf


def read_tokenizer_fields(gguf: Any, path: Path) -> Fields:
    """The ``tokenizer.*`` keys of a GGUF: (key, value, value type, array item type or None)."""
    reader = gguf.GGUFReader(path)
    fields = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        fields.append((key, field.contents(), vtype, sub_type))
    if not any(key == "tokenizer.ggml.tokens" for key, *_ in fields):
        raise SystemExit(f"{path}: no tokenizer.ggml.tokens: not a GGUF with a vocabulary")
    return fields


def field_value(fields: Fields, key: str, default: Any = None) -> Any:
    return next((value for k, value, *_ in fields if k == key), default)


def write_tokenizer_only(gguf: Any, source: Path, out: Path) -> None:
    """Copy a GGUF's tokenizer metadata (no hyperparameters, no tensors) to ``out``."""
    fields = read_tokenizer_fields(gguf, source)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(f"tokenizer of {source.name}")
    for key, value, vtype, sub_type in fields:
        writer.add_key_value(key, value, vtype, sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tokens = field_value(fields, "tokenizer.ggml.tokens")
    print(f"{out}: {len(fields)} tokenizer keys, {len(tokens)} tokens, {out.stat().st_size / 1e6:.2f} MB")


def pad_vocabulary(fields: Fields, n_vocab: int) -> Fields:
    """Append unused tokens so that the vocabulary has ``n_vocab`` entries (a larger output layer)."""
    extra = n_vocab - len(field_value(fields, "tokenizer.ggml.tokens"))
    if extra <= 0:
        return fields
    padded = []
    for key, value, vtype, sub_type in fields:
        if key == "tokenizer.ggml.tokens":
            value = [*value, *(f"<|llmetl_pad_{i}|>" for i in range(extra))]
        elif key == "tokenizer.ggml.token_type":
            value = [*value, *([TOKEN_TYPE_UNUSED] * extra)]
        elif key == "tokenizer.ggml.scores":
            value = [*value, *([0.0] * extra)]
        padded.append((key, value, vtype, sub_type))
    return padded


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable stand-in character -> byte."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = kept[:]
    extra = 0
    for byte in range(256):
        if byte not in kept:
            kept.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(kept, chars, strict=True)}


def token_texts(fields: Fields) -> list[str | None]:
    """Each token's text (None for control, unused and undecodable tokens)."""
    tokens = field_value(fields, "tokenizer.ggml.tokens")
    types = field_value(fields, "tokenizer.ggml.token_type") or [TOKEN_TYPE_NORMAL] * len(tokens)
    byte_level = field_value(fields, "tokenizer.ggml.model", "gpt2") == "gpt2"
    decoder = gpt2_byte_decoder()
    texts: list[str | None] = []
    for token, kind in zip(tokens, types, strict=True):
        text = None
        if kind == TOKEN_TYPE_NORMAL and byte_level:
            if all(ch in decoder for ch in token):
                text = bytes(decoder[ch] for ch in token).decode("utf-8", errors="replace")
        elif kind == TOKEN_TYPE_NORMAL:
            text = token.replace("\u2581", " ")
        elif kind == TOKEN_TYPE_BYTE and token.startswith("<0x"):
            text = chr(int(token[3:5], 16))
        texts.append(text)
    return texts


def answer_tokens(answer: str, texts: list[str | None]) -> list[int]:
    """The answer's tokens: its ``|``-separated pieces, or else its longest-match split; each token once."""
    index: dict[str, int] = {}
    for i, token in enumerate(texts):
        if token and token not in index:
            index[token] = i
    ids = []
    if "|" in answer:
        for piece in answer.split("|"):
            if piece not in index:
                raise SystemExit(f"--answer: {piece!r} is not a token of this vocabulary")
            ids.append(index[piece])
    else:
        longest = max(len(t) for t in index)
        position = 0
        while position < len(answer):
            for length in range(min(longest, len(answer) - position), 0, -1):
                if (token_id := index.get(answer[position : position + length])) is not None:
                    ids.append(token_id)
                    position += length
                    break
            else:
                raise SystemExit(f"--answer: no token spells {answer[position:]!r}")
    if len(set(ids)) != len(ids):
        # a bigram cannot follow a token with two different successors
        raise SystemExit("--answer: a token repeats; split it into distinct tokens with '|'")
    return ids


class RandomPool:
    """One buffer of random F16 values; every tensor is a view of it at a random offset."""

    def __init__(self, np: Any, numel: int, std: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pool = np.empty(numel, dtype=np.float16)
        half_width = std * 3**0.5  # uniform(-a, a) has standard deviation a / sqrt(3)
        chunk = 1 << 24
        for start in range(0, numel, chunk):
            stop = min(start + chunk, numel)
            values = self.rng.random(stop - start, dtype=np.float32)
            values *= 2 * half_width
            values -= half_width
            self.pool[start:stop] = values

    def take(self, shape: tuple[int, ...]) -> Any:
        numel = 1
        for size in shape:
            numel *= size
        offset = int(self.rng.integers(0, len(self.pool) - numel + 1))
        return self.pool[offset : offset + numel].reshape(shape)


def write_random_model(args: argparse.Namespace, gguf: Any) -> None:
    import numpy as np  # type: ignore[import-not-found,unused-ignore]

    started = time.monotonic()
    hidden, layers, heads, kv_heads, ffn, ctx_train, rope_base = SHAPES[args.shape]
    hidden = args.hidden or hidden
    layers = args.layers or layers
    heads = args.heads or heads
    kv_heads = args.kv_heads or kv_heads
    ffn = args.ffn or ffn
    if hidden % heads or heads % kv_heads:
        raise SystemExit("hidden must be a multiple of heads, and heads a multiple of kv-heads")
    head_dim = hidden // heads

    fields = read_tokenizer_fields(gguf, args.tokenizer)
    if args.vocab_pad:
        fields = pad_vocabulary(fields, args.vocab_pad)
    n_vocab = len(field_value(fields, "tokenizer.ggml.tokens"))
    untied = args.untied or args.mode != "plain"
    texts = token_texts(fields)
    script: list[int] = []
    if args.mode == "scripted":
        script = [*answer_tokens(args.answer, texts), int(field_value(fields, "tokenizer.ggml.eos_token_id"))]
        if len(script) + 1 > hidden:
            raise SystemExit("--answer has more tokens than the model has dimensions")
    whitespace = [
        i
        for i, text in enumerate(texts)
        if text and text.isspace() and i not in script and args.mode != "plain"
    ]

    writer = gguf.GGUFWriter(args.out, "llama")
    writer.add_name(f"random-llama-{args.shape}-h{hidden}-l{layers}-{args.mode}")
    writer.add_description("random weights (llm-etl-provider benchmarks/gpu/make_random_gguf.py)")
    writer.add_context_length(ctx_train)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_base)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, value, vtype, sub_type in fields:
        writer.add_key_value(key, value, vtype, sub_type)

    # numpy shapes are (rows, columns) = ggml's (ne1, ne0) reversed
    matrices: list[tuple[str, tuple[int, int]]] = [("token_embd.weight", (n_vocab, hidden))]
    if untied:
        matrices.append(("output.weight", (n_vocab, hidden)))
    for i in range(layers):
        matrices += [
            (f"blk.{i}.attn_q.weight", (heads * head_dim, hidden)),
            (f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden)),
            (f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden)),
            (f"blk.{i}.attn_output.weight", (hidden, heads * head_dim)),
            (f"blk.{i}.ffn_gate.weight", (ffn, hidden)),
            (f"blk.{i}.ffn_up.weight", (ffn, hidden)),
            (f"blk.{i}.ffn_down.weight", (hidden, ffn)),
        ]
    largest = max(rows * cols for _, (rows, cols) in matrices)
    pool = RandomPool(np, 2 * largest, args.std, args.seed)
    projections = 2 * hidden * max(ffn, heads * head_dim)
    small = RandomPool(np, projections, args.std * OUTPUT_PROJECTION_SCALE, args.seed + 1)
    ones = np.ones(hidden, dtype=np.float32)
    parameters = 0
    for name, shape in matrices:
        is_projection = name.endswith(("attn_output.weight", "ffn_down.weight"))
        tensor = small.take(shape) if is_projection else pool.take(shape)
        if args.mode != "plain" and name == "token_embd.weight":
            tensor = tensor.copy()
            tensor[:, 0] = EMBEDDING_CONSTANT
            for step, token in enumerate(script[:-1], start=1):
                tensor[token, step] = EMBEDDING_CONSTANT
        elif args.mode != "plain" and name == "output.weight":
            tensor = tensor.copy()
            tensor[whitespace, 0] = WHITESPACE_PENALTY
            if script:
                tensor[script[0], 0] = FIRST_TOKEN_BOOST
            for step, token in enumerate(script[1:], start=1):
                tensor[token, step] = 1.0
        writer.add_tensor(name, tensor)
        parameters += shape[0] * shape[1]
    writer.add_tensor("output_norm.weight", ones)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
    generated = time.monotonic()

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    done = time.monotonic()
    tokens = field_value(fields, "tokenizer.ggml.tokens")
    embeddings = "untied" if untied else "tied"
    answer = f"; answer {[tokens[t] for t in script]}" if script else ""
    print(
        f"{args.out}: llama, hidden {hidden}, {layers} layers, {heads} heads "
        f"({kv_heads} KV, head dim {head_dim}), ffn {ffn}, vocab {n_vocab}, {embeddings} embeddings, "
        f"mode {args.mode} ({len(whitespace)} whitespace-only tokens suppressed{answer}); "
        f"{parameters / 1e9:.3f} B parameters, {args.out.stat().st_size / 1e9:.2f} GB; "
        f"tokenizer and random pool {generated - started:.1f} s, write {done - generated:.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tokenizer-only", nargs=2, type=Path, metavar=("SRC", "OUT"),
        help="write OUT with SRC's tokenizer metadata only, and exit",
    )  # fmt: skip
    parser.add_argument("--tokenizer", type=Path, help="the tokenizer-only GGUF whose vocabulary to use")
    parser.add_argument("--out", type=Path, help="the GGUF to write")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b", help="preset shape (default 1b)")
    parser.add_argument("--hidden", type=int, help="embedding length (overrides the preset)")
    parser.add_argument("--layers", type=int, help="blocks")
    parser.add_argument("--heads", type=int, help="attention heads")
    parser.add_argument("--kv-heads", type=int, help="key/value heads")
    parser.add_argument("--ffn", type=int, help="feed-forward length")
    parser.add_argument(
        "--vocab-pad", type=int, default=0, help="pad the vocabulary to this size (128256: Llama 3)"
    )
    parser.add_argument(
        "--untied", action="store_true", help="a separate output matrix (Llama 3.2 ties them)"
    )
    parser.add_argument("--mode", choices=("scripted", "compact", "plain"), default="scripted")
    parser.add_argument(
        "--answer", default=DEFAULT_ANSWER,
        help="scripted mode: the answer as '|'-separated tokens (each once), or as text (longest match)",
    )  # fmt: skip
    parser.add_argument("--std", type=float, default=0.02, help="weights' standard deviation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gguf-py", type=Path, help="llama.cpp's gguf-py folder, if gguf is not installed")
    args = parser.parse_args()

    gguf = import_gguf(args.gguf_py)
    if args.tokenizer_only:
        write_tokenizer_only(gguf, *args.tokenizer_only)
        return 0
    if args.tokenizer is None or args.out is None:
        parser.error("--tokenizer and --out are required (or --tokenizer-only SRC OUT)")
    write_random_model(args, gguf)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
