"""metrics.kernels: the reference SSIM window."""

from __future__ import annotations

import numpy as np

from m3rcr_xr import metrics


def test_window_is_the_reference_one_centred_at_5_5():
    window = metrics.gaussian_window()
    assert window.dtype == np.float32 and window.shape == (11,)
    assert window[5] == window[6] and window.argmax() in (5, 6)
    np.testing.assert_allclose(window.sum(), 1.0, rtol=1e-6)
