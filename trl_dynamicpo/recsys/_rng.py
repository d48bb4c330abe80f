"""Per-prompt random streams.

Every random choice in `trl_dynamicpo.recsys` that concerns one prompt (its negative candidates, the target's slot,
the prompt paraphrase, the sampled rejected completions, random-baseline scores) comes from its own generator,
seeded by a global seed, the prompt's row index and a constant naming the purpose. Results therefore do not depend
on the order in which prompts are processed, on how many prompts come before, or on the process, and two purposes
never share a stream.
"""

from __future__ import annotations

import zlib

import numpy as np


# One constant per purpose, so that e.g. the paraphrase choice and the negative sampling of a row are independent.
SALT_CANDIDATES = 0xCA4D1DA7
SALT_PROMPT = 0x9A0B7E11
SALT_NEGATIVES = 0x4E6A71FE
SALT_RANDOM_BASELINE = 0x7A4D0B5E
SALT_LEAK_CHECK = 0x1EA4C4EC
SALT_SAMPLE = 0x5A3B1E00


def stream(seed: int, index: int, salt: int, *extra: int) -> np.random.Generator:
    """Return the generator for row `index` under `seed` and purpose `salt` (all non-negative integers)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index), salt, *extra])))


def text_key(text: str) -> int:
    """A stable 32-bit key of a string (CRC-32 of its UTF-8 bytes), for mixing content into a seed."""
    return zlib.crc32(text.encode("utf-8"))
