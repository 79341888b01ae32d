"""Per-token bookkeeping without a model: the reuse set as a patch-grid mask."""
from __future__ import annotations

import numpy as np
import pytest

from vla_cache_ros.cache.tokens import extract_patches, grid_side, reuse_mask
from vla_cache_ros.errors import ConfigurationError


def test_reuse_mask_is_row_major_over_the_patches() -> None:
    mask = reuse_mask(np.array([0, 17, 255]), 256)
    assert mask.shape == (16, 16) and mask.dtype == bool and mask.sum() == 3
    assert mask[0, 0] and mask[1, 1] and mask[15, 15]
    # the same numbering as the patches: patch 17 is the frame's 14 px square at row 1, column 1
    frame = np.zeros((224, 224, 3), dtype=np.uint8)
    frame[14:28, 14:28] = 255
    assert np.flatnonzero(extract_patches(frame, 256).any(axis=1)).tolist() == [17]
    assert not reuse_mask(np.array([], dtype=np.int64), 256).any()


def test_a_token_count_that_is_not_a_square_is_refused() -> None:
    assert grid_side(256) == 16
    with pytest.raises(ConfigurationError, match="do not form a square grid"):
        reuse_mask(np.array([0]), 200)
