"""Size presets of the synthetic MicroLens generator."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticScale:
    """Every size knob of one synthetic dataset.

    Row counts are exact: the generator writes precisely ``n_train`` / ``n_valid`` /
    ``n_test`` rows. ``n_users`` users get a click timeline; each timeline holds between
    ``min_clicks`` and ``max_clicks`` clicks (log-normal, median ``median_clicks``).
    """

    name: str
    n_items: int
    n_users: int
    n_train: int
    n_valid: int
    n_test: int
    seq_len: int  # L: history length of train/valid/test rows and of item_seq.parquet
    tag_vocab: int  # V: tag ids are 1..V-1, 0 is padding
    median_clicks: float
    min_clicks: int
    max_clicks: int
    image_size: int = 128
    user_chunk: int = 20_000  # users simulated together (bounds memory)

    def __post_init__(self) -> None:
        if self.n_items < 50:
            raise ValueError(f"n_items must be >= 50, got {self.n_items}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if not 2 <= self.min_clicks <= self.max_clicks:
            raise ValueError(
                f"need 2 <= min_clicks <= max_clicks, got {self.min_clicks}, {self.max_clicks}"
            )
        if self.tag_vocab < 60:
            raise ValueError(f"tag_vocab must be >= 60, got {self.tag_vocab}")
        if self.image_size < 128:
            raise ValueError(f"image_size must be >= 128, got {self.image_size}")


SCALES: dict[str, SyntheticScale] = {
    # Tests: a few seconds.
    "tiny": SyntheticScale(
        name="tiny", n_items=600, n_users=800, n_train=4000, n_valid=500, n_test=500,
        seq_len=20, tag_vocab=200, median_clicks=10, min_clicks=3, max_clicks=40,
        user_chunk=800,
    ),
    # The demo's: fewer items seen more often, shorter histories and a large validation
    # split, so that the fixed DIN separates tables within minutes on 2 CPU cores.
    "demo": SyntheticScale(
        name="demo", n_items=3_000, n_users=30_000, n_train=120_000, n_valid=30_000,
        n_test=10_000, seq_len=16, tag_vocab=600, median_clicks=10, min_clicks=3,
        max_clicks=40, user_chunk=30_000,
    ),
    # The settled comparisons (recipes/compare_fusions.yaml).
    "small": SyntheticScale(
        name="small", n_items=10_000, n_users=50_000, n_train=200_000, n_valid=10_000,
        n_test=20_000, seq_len=32, tag_vocab=2000, median_clicks=14, min_clicks=3,
        max_clicks=80, user_chunk=25_000,
    ),
    # MicroLens-1M row counts (MicroLens_1M_x1).
    "full": SyntheticScale(
        name="full", n_items=91_717, n_users=1_000_000, n_train=3_600_000, n_valid=10_000,
        n_test=379_142, seq_len=100, tag_vocab=11_740, median_clicks=16, min_clicks=3,
        max_clicks=200, user_chunk=25_000,
    ),
}
