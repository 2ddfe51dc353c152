"""The tiny tokenizers: real tokenizer classes with vocabularies learned offline from one fixed corpus.

Learned here in plain Python from sorted inputs (no trainer, no hash-order dependence) so that
every machine builds byte-identical vocabularies, hence identical cached twins and embeddings.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

# A fixed English corpus for the tiny tokenizers: caption vocabulary (subjects, actions,
# places, colours, light, camera language), the HunyuanVideo system-prompt template, digits and
# punctuation. Most words of a typical caption are single tokens of every tiny tokenizer.
# HunyuanVideoPipeline crops a hard-coded 95 tokens (Llama 3's count for its template prefix);
# the template lines below are worded so that the tiny Llama tokenizer also splits that prefix
# into exactly 95 tokens ("angles" is left out so it becomes "▁angle" + "s"), which a test checks.
CORPUS = """
A woman with long brown hair and light skin smiles at another woman with long blonde hair.
The woman with brown hair wears a black jacket and has a small, barely noticeable mole on her right cheek.
The camera angle is a close-up, focused on the woman's face. The lighting is warm and natural, likely from
the setting sun, casting a soft glow on the scene. The scene appears to be real-life footage.
A man with short gray hair plays a red electric guitar on a dark stage under bright blue spotlights.
A cat walks on the grass, realistic. A dog runs across a green field and jumps over a wooden fence.
A young girl in a yellow dress rides a bicycle down a quiet street lined with tall trees in autumn.
An old man sits on a bench in the park and feeds white birds while children play in the background.
A red car drives along a winding mountain road at sunset; the camera follows it from above with a drone.
Waves crash against the rocks on a rocky beach while the ocean water sparkles in the afternoon sunlight.
A chef in a white uniform cuts fresh vegetables on a kitchen table, then stirs a pot of soup.
Two people walk hand in hand through a busy city at night, surrounded by neon signs and reflections in the rain.
A horse gallops through a snowy forest as snow falls slowly; the shot is wide and cinematic.
A small boat floats on a calm lake in the early morning fog, with mountains and a cloudy sky behind it.
A person is typing on a laptop in a modern office with large windows and a view of the skyline.
Close-up of a hand holding a cup of hot coffee; steam rises and the background is blurry.
The video shows a timelapse of clouds moving over a desert with orange sand dunes and long shadows.
A group of friends laughs around a campfire in the woods, their faces lit by the flickering fire.
An aerial view of a river flowing through a valley, surrounded by green hills and small houses.
A young man with a beard and glasses reads a book in a library, turning the pages slowly.
A bird flies over the sea and lands on a wooden pole near the harbor, where fishing boats are docked.
A dancer in a purple costume spins on the floor of a studio with mirrors and soft pink light.
The camera slowly pans left to right, then zooms in on a glass bottle on a table next to a vase of flowers.
Static shot, medium shot, tracking shot, handheld camera, low angle, high angle, slow motion, time-lapse.
Film grain, vintage style, anime style, cartoon, 3D animation, photorealistic, high quality, 4k, 8k, HDR.
A train moves past a station as people wait on the platform; a clock on the wall shows the time.
Her eyes look toward the window; his hands are on the steering wheel; they are talking and smiling.
It is raining heavily outside, and water drips from the leaves of the plants in the garden.
There are three cars, two trees, one house, four birds, five flowers, six chairs, seven people and nine lamps.
Zero, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 24, 30, 48, 60, 100, 2024, 2025.
What, where, when, who, why, how: this, that, these, those, very, more, most, some, all, each, every, into, onto.
Colors: red, orange, yellow, green, blue, purple, pink, brown, black, white, gray, grey, golden, silver, dark, bright.
Light: sunny, shadow, shadows, backlit, silhouette, dim, glowing, neon, candle, lamp, moonlight, daylight.
Objects: phone, screen, door, wall, floor, road, bridge, building, tower, hat, shirt, shoes, bag, box, ball, paper.
Actions: walking, running, jumping, sitting, standing, dancing, singing, eating, drinking, looking, holding, turning.
Describe the video by detailing the following aspects: 1. The main content and theme of the video.
2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.
3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.
4. background environment, light, style and atmosphere.
5. camera angle, movements, and transitions used in the video:
system user assistant
"""


def corpus_words() -> list[str]:
    """Words and punctuation runs of the corpus, in corpus order (repeats kept: frequencies)."""
    return re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d|[^\sA-Za-z\d]", CORPUS)


def learn_bpe(words: Counter) -> list[tuple[str, str]]:
    """Byte-pair merges over symbol tuples until every word is one symbol, deterministically:
    the most frequent pair first, ties broken by the smallest pair.

    Plain Python (incremental pair counts + a lazy heap) so that a twin's vocabulary never
    depends on a trainer's thread scheduling or hash seeds: every machine builds the same one.
    """
    import heapq
    from collections import defaultdict

    items = sorted(words.items())
    syms = [list(w) for w, _ in items]
    freq = [c for _, c in items]
    counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(syms):
        for p in zip(w, w[1:]):
            counts[p] += freq[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        negc, pair = heapq.heappop(heap)
        c = counts.get(pair, 0)
        if c <= 0:
            continue
        if -negc != c:  # stale entry: requeue with the current count
            heapq.heappush(heap, (-c, pair))
            continue
        merges.append(pair)
        a, b = pair
        for i in sorted(where.pop(pair, ())):
            w, f = syms[i], freq[i]
            new, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    new.append(a + b)
                    j += 2
                else:
                    new.append(w[j])
                    j += 1
            if len(new) == len(w):
                continue
            for q in zip(w, w[1:]):
                counts[q] -= f
            for q in zip(new, new[1:]):
                counts[q] += f
                where[q].add(i)
                heapq.heappush(heap, (-counts[q], q))
            syms[i] = new
        counts.pop(pair, None)
    return merges


def sp_bpe_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab + merges for a SentencePiece-style BPE (Gemma, Llama 2 style): '▁' marks a word
    start, byte-fallback tokens <0x00>..<0xFF> make every string encodable."""
    counts: Counter = Counter()
    for w in corpus_words():
        counts[tuple("▁" + w)] += 2
        counts[tuple(w)] += 1  # the first word of a text (Gemma adds no prefix space)
    counts[tuple("\n\n")] += 1  # one token in Gemma 3 and Llama 3 (chat templates)
    merges = learn_bpe(counts)
    vocab: dict[str, int] = {}
    for tok in specials + [f"<0x{i:02X}>" for i in range(256)]:
        vocab.setdefault(tok, len(vocab))
    for ch in sorted({c for w in counts for c in w}):
        vocab.setdefault(ch, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def t5_tokenizer(model_max_length: int):
    """T5Tokenizer (the class of both T5-v1.1 and UMT5 repos): a Unigram vocabulary with
    '▁word' pieces scored by log frequency, plus single characters as a fallback."""
    from transformers import T5Tokenizer

    counts: Counter = Counter()
    for w in corpus_words():
        counts["▁" + w] += 2
        counts[w] += 1
    total = sum(counts.values())
    pieces = sorted(((p, math.log(c / total)) for p, c in counts.items()), key=lambda x: (-x[1], x[0]))
    chars = sorted({c for p in counts for c in p} | set(string.ascii_letters + string.digits + string.punctuation) | {"▁"})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {v[0] for v in vocab}
    for p, s in pieces:
        if p not in seen:
            vocab.append((p, s))
            seen.add(p)
    for ch in chars:
        if ch not in seen:
            vocab.append((ch, -20.0))  # below any word: whole words win the Viterbi path
            seen.add(ch)
    return T5Tokenizer(vocab=vocab, extra_ids=8, model_max_length=model_max_length)


_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
_GEMMA_IMAGE_TOKENS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]


def gemma_tokenizer(model_max_length: int):
    from transformers import GemmaTokenizerFast

    vocab, merges = sp_bpe_vocab(_GEMMA_SPECIALS + _GEMMA_IMAGE_TOKENS)
    tok = GemmaTokenizerFast(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
        add_bos_token=True,  # as Gemma's own tokenizer
        padding_side="left",  # what LTX2Pipeline sets anyway; pad and eos both exist
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    return tok


_LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def llama_tokenizer(model_max_length: int):
    from transformers import LlamaTokenizerFast

    vocab, merges = sp_bpe_vocab(["<unk>"] + _LLAMA3_SPECIALS)
    tok = LlamaTokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        add_bos_token=True,
        model_max_length=model_max_length,
        # HunyuanVideoPipeline crops the template prefix from the front of the sequence, which
        # assumes right padding (as the llava-llama-3 tokenizer does).
        padding_side="right",
        extra_special_tokens={"start_header": "<|start_header_id|>", "end_header": "<|end_header_id|>", "eot": "<|eot_id|>"},
    )
    return tok


def _pre_tokenized(blank, lines: list[str]) -> list[str]:
    """The pieces a real tokenizer's own normaliser and pre-tokeniser cut `lines` into, so that
    merges learned over them are merges that tokenizer can actually apply."""
    norm = blank.backend_tokenizer.normalizer
    pre = blank.backend_tokenizer.pre_tokenizer
    return [piece for line in lines for piece, _ in pre.pre_tokenize_str(norm.normalize_str(line))]


def clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # a blank CLIPTokenizer only for its normaliser and pre-tokeniser (CLIP's regex + byte level)
    counts = Counter(tuple(p[:-1]) + (p[-1] + "</w>",) for p in _pre_tokenized(CLIPTokenizer(), CORPUS.strip().splitlines()))
    merges = learn_bpe(counts)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for tok in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for tok in ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def qwen_tokenizer(specials: list[str], named: dict[str, str], chat_template: str):
    """Qwen2Tokenizer (the class of every Qwen2/2.5/3-VL and Omni repo): byte-level BPE with
    Qwen's pre-tokenizer, merges learned from the fixed caption corpus, Qwen's special tokens
    (`specials`, with `named` ones such as image_token exposed as attributes)."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    # a blank Qwen2Tokenizer only for its normaliser and pre-tokeniser (Qwen's regex + byte level)
    pieces = _pre_tokenized(Qwen2Tokenizer(), CORPUS.strip().splitlines() + ["system", "user", "assistant", "\n"])
    merges = learn_bpe(Counter(tuple(p) for p in pieces))
    vocab: dict[str, int] = {}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in specials:
        vocab.setdefault(special, len(vocab))
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        extra_special_tokens=dict(named),
    )
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True)
    tok.chat_template = chat_template
    return tok
