"""Shared by the max-pool tests of every device: a window holding a NaN pools to NaN on
numpy (kernels/reference.py), cpu and cuda alike, and its gradient goes to the first NaN in
scan order (row by row), as numpy's argmax picks it; a window without one keeps the first
maximum. The rule is checked window by window, then each device against the reference."""
import numpy as np

from minifcn.kernels import reference as R

# x shape, kernel, stride, pad, ceil_mode: the cpu's 2x2 fast path (with a short last window;
# rows short and long, heights odd and even) and its general loop (overlapping, padded windows)
CASES = [((1, 2, 7, 7), (2, 2), (2, 2), (0, 0), True),
         ((1, 2, 7, 49), (2, 2), (2, 2), (0, 0), True),
         ((1, 2, 6, 8), (2, 2), (2, 2), (0, 0), True),
         ((1, 2, 6, 5), (3, 3), (2, 2), (1, 1), True)]


def nan_input(rng, shape, dtype):
    """Small integers (ties too) with NaNs: one at a plane's first pixel, two in one row,
    one alone at a 2x2 window's last pixel, a few at random, so that windows hold none, one,
    or several."""
    x = rng.integers(-3, 3, shape).astype(dtype)
    x[0, 0, 0, 0] = np.nan
    x[0, 1, 2, 1] = x[0, 1, 2, 2] = np.nan
    x[0, 1, 4, 3] = np.nan
    x[0, 0, 3, 3] = np.nan                   # a 2x2 window's last pixel alone
    x.reshape(-1)[rng.choice(x.size, 3, replace=False)] = np.nan
    return x


def first_nan_rule(x, y, arg, kernel, stride, pad, ceil_mode):
    """Assert each output against its window: NaN and the first NaN's index if it holds
    one, else the window's maximum and its first occurrence."""
    N, C, H, W = x.shape
    rows = list(R._windows(H, kernel[0], stride[0], pad[0], ceil_mode))
    cols = list(R._windows(W, kernel[1], stride[1], pad[1], ceil_mode))
    seen = 0
    for n in range(N):
        for c in range(C):
            for oh, (h0, h1, _) in enumerate(rows):
                for ow, (w0, w1, _) in enumerate(cols):
                    idx = [(h, w) for h in range(h0, h1) for w in range(w0, w1)]
                    vals = [x[n, c, h, w] for h, w in idx]
                    nans = [i for i, v in enumerate(vals) if np.isnan(v)]
                    win = nans[0] if nans else int(np.argmax(vals))
                    seen += bool(nans)
                    assert np.isnan(y[n, c, oh, ow]) == bool(nans)
                    if not nans:
                        assert y[n, c, oh, ow] == max(vals)
                    h, w = idx[win]
                    assert arg[n, c, oh, ow] == h * W + w
    assert seen >= 3                          # the case holds NaN windows to check


def check_device(rng, pool, backward, host, dtype):
    """pool / backward: a device's max_pool2d and max_pool2d_backward; host: to NumPy."""
    for shape, *geo in CASES:
        x = nan_input(rng, shape, dtype)
        y, arg = R.max_pool2d(x, *geo)
        first_nan_rule(x, y, arg, *geo)
        gy, garg = pool(x, *geo)
        np.testing.assert_array_equal(host(gy), y)           # NaN where the reference has it
        np.testing.assert_array_equal(host(garg), arg)
        dout = rng.standard_normal(y.shape).astype(dtype)
        dx = R.max_pool2d_backward(dout, arg, shape)
        np.testing.assert_array_equal(host(backward(dout, garg, shape)), dx)
        assert np.count_nonzero(dx[np.isnan(x)]) > 0           # the gradient reaches a NaN
