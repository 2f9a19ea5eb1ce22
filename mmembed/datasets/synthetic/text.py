"""Titles and tags drawn from an item's text content ``[text_only | shared]``.

Each of the topics in ``topics.txt`` has a random unit direction in the 16-d text
content space, and each word the direction of its topic plus a smaller word-specific
offset. A title fills a template from ``templates.txt`` with content words drawn
from the item's two leading topics (drawn from the topic mixture; 70% of the words from
the first), words inside a topic without replacement from
``softmax(WORD_SHARPNESS * word_directions @ content)``: the topics show which themes an
item is about (what a sentence encoder sees), the exact words add finer detail. Tags: ids 1..V-1 are spread over the topics; an item has
1-5 distinct tags, most drawn from its mixture, some uniformly at random (noise).
"""
from __future__ import annotations

import functools
from importlib import resources

import numpy as np

TOPIC_SHARPNESS = 4.0
WORD_SHARPNESS = 4.0
WORD_SPREAD = 0.6  # size of a word's own offset from its topic direction
PRIMARY_TOPIC_SHARE = 0.7  # share of title words from the leading topic
ITEM_BLOCK = 4096  # items whose word draws are computed together (bounds memory)
TAG_NOISE = 0.2  # probability that a tag is uniform at random, not topical
TAG_COUNT_WEIGHTS = np.array([0.15, 0.30, 0.25, 0.18, 0.12])  # 1..5 tags
TAG_ZIPF = 1.1  # popularity of tags inside a topic
MAX_TAGS = 5


def _package_lines(name: str) -> list[str]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


@functools.lru_cache(maxsize=1)
def load_topics() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(topic name, words) pairs from the shipped ``topics.txt``."""
    topics = []
    for line in _package_lines("topics.txt"):
        name, _, words = line.partition(":")
        topics.append((name.strip(), tuple(words.split())))
    return tuple(topics)


@functools.lru_cache(maxsize=1)
def load_templates() -> tuple[str, ...]:
    return tuple(_package_lines("templates.txt"))


def topic_directions(dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-norm random direction per topic, (n_topics, dim)."""
    d = rng.standard_normal((len(load_topics()), dim))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def topic_logits(text_content: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Unnormalised log topic mixture of each item, (N, n_topics)."""
    return TOPIC_SHARPNESS * text_content.astype(np.float64) @ directions.T


def _sample_topics(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k independent topic draws per item from softmax(logits) (Gumbel-max), (N, k)."""
    gumbel = rng.gumbel(size=(logits.shape[0], k, logits.shape[1]))
    return np.argmax(logits[:, None, :] + gumbel, axis=2)


def word_directions(directions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit direction per vocabulary word (topics.txt order), (n_words, dim)."""
    topic_of_word = np.concatenate([np.full(len(words), k)
                                    for k, (_, words) in enumerate(load_topics())])
    d = directions[topic_of_word] + WORD_SPREAD * rng.standard_normal(
        (len(topic_of_word), directions.shape[1])) / np.sqrt(directions.shape[1])
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def make_titles(text_content: np.ndarray, directions: np.ndarray,
                rng: np.random.Generator) -> list[str]:
    """One title per item: a template filled with words of its two leading topics."""
    topics = load_topics()
    vocabulary = np.array([w for _, words in topics for w in words])
    topic_of_word = np.concatenate([np.full(len(words), k) for k, (_, words) in enumerate(topics)])
    templates = load_templates()
    slots = np.array([t.count("{}") for t in templates])
    max_slots = int(slots.max())
    n = text_content.shape[0]
    word_dirs = word_directions(directions, rng).astype(np.float32)
    template_idx = rng.integers(0, len(templates), n)
    # Two distinct topics per item (Gumbel top-2 of the topic mixture).
    topic_keys = topic_logits(text_content, directions) + rng.gumbel(size=(n, len(topics)))
    lead = np.argsort(-topic_keys, axis=1)[:, :2]
    from_second = rng.random((n, max_slots)) >= PRIMARY_TOPIC_SHARE
    # Words: Gumbel top-k inside each of the two topics = draws without replacement.
    ranked = np.empty((n, 2, max_slots), dtype=np.int64)
    for s in range(0, n, ITEM_BLOCK):
        block = slice(s, min(s + ITEM_BLOCK, n))
        keys = WORD_SHARPNESS * text_content[block].astype(np.float32) @ word_dirs.T
        keys = keys + rng.gumbel(size=keys.shape).astype(np.float32)
        for j in range(2):
            masked = np.where(topic_of_word[None, :] == lead[block, j:j + 1], keys, -np.inf)
            ranked[block, j] = np.argsort(-masked, axis=1, kind="stable")[:, :max_slots]
    titles = []
    for i in range(n):
        k = slots[template_idx[i]]
        use_second = from_second[i, :k]
        taken = [0, 0]
        words = []
        for j in use_second.astype(np.int64).tolist():
            words.append(vocabulary[ranked[i, j, taken[j]]])
            taken[j] += 1
        titles.append(templates[template_idx[i]].format(*words))
    return titles


def make_tags(logits: np.ndarray, tag_vocab: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 5) int64 tag ids, distinct per item, 0-padded on the right."""
    n_topics = logits.shape[1]
    n = logits.shape[0]
    n_tags = 1 + rng.choice(MAX_TAGS, size=n, p=TAG_COUNT_WEIGHTS)
    # Tag t (1..V-1) belongs to topic (t-1) % n_topics, at rank (t-1) // n_topics there.
    per_topic = np.array([len(range(k, tag_vocab - 1, n_topics)) for k in range(n_topics)])
    # Draw 2x the slots so duplicates can be skipped without a second pass.
    draws = 2 * MAX_TAGS
    topic = _sample_topics(logits, draws, rng)
    max_rank = int(per_topic.max())
    zipf = (np.arange(max_rank) + 1.0) ** -TAG_ZIPF
    cdf_by_topic = np.zeros((n_topics, max_rank))
    for k in range(n_topics):
        p = zipf[: per_topic[k]]
        cdf_by_topic[k, : per_topic[k]] = np.cumsum(p) / p.sum()
        cdf_by_topic[k, per_topic[k]:] = 1.0
    u = rng.random((n, draws))
    rank = np.empty((n, draws), dtype=np.int64)
    for k in range(n_topics):  # inverse-CDF per topic, vectorised over items
        mask = topic == k
        rank[mask] = np.searchsorted(cdf_by_topic[k], u[mask], side="right")
    rank = np.minimum(rank, per_topic[topic] - 1)
    tag = 1 + topic + n_topics * rank
    noise = rng.random((n, draws)) < TAG_NOISE
    tag[noise] = rng.integers(1, tag_vocab, int(noise.sum()))
    out = np.zeros((n, MAX_TAGS), dtype=np.int64)
    for i in range(n):
        chosen = list(dict.fromkeys(tag[i].tolist()))[: n_tags[i]]
        out[i, : len(chosen)] = chosen
    return out
