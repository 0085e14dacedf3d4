"""The numba kernels behind reference/fused.py (imported only when a large array needs them: importing numba
costs a worker start-up a noticeable fraction of a second). See fused.py for what they compute and why their
results are the plain path's bits."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

@njit(cache=True, inline="always")
def _term(x, dy, i, m, r, kind):
    if kind == 0:
        return x[i]
    if kind == 1:
        return x[i] - m
    if kind == 2:
        d = x[i] - m
        return d * d
    p = dy[i] * (x[i] - m)
    return p if kind == 3 else p * r

@njit(cache=True)
def _leaf(x, dy, lo, n, m, r, kind):
    """NumPy's pairwise sum for n <= 128 terms from lo: eight accumulators, then the rest one by one."""
    # Indexing views from 0 (not x[lo + i]) lets LLVM drop numba's negative-index wraparound, which otherwise
    # keeps the loop scalar; the additions and their order are the same.
    xs, ds = x[lo:lo + n], dy[lo:lo + n]
    if n < 8:
        res = -0.0
        for i in range(n):
            res += _term(xs, ds, i, m, r, kind)
        return res
    r0, r1 = _term(xs, ds, 0, m, r, kind), _term(xs, ds, 1, m, r, kind)
    r2, r3 = _term(xs, ds, 2, m, r, kind), _term(xs, ds, 3, m, r, kind)
    r4, r5 = _term(xs, ds, 4, m, r, kind), _term(xs, ds, 5, m, r, kind)
    r6, r7 = _term(xs, ds, 6, m, r, kind), _term(xs, ds, 7, m, r, kind)
    top = n - n % 8
    for j in range(8, top, 8):
        r0 += _term(xs, ds, j, m, r, kind)
        r1 += _term(xs, ds, j + 1, m, r, kind)
        r2 += _term(xs, ds, j + 2, m, r, kind)
        r3 += _term(xs, ds, j + 3, m, r, kind)
        r4 += _term(xs, ds, j + 4, m, r, kind)
        r5 += _term(xs, ds, j + 5, m, r, kind)
        r6 += _term(xs, ds, j + 6, m, r, kind)
        r7 += _term(xs, ds, j + 7, m, r, kind)
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(top, n):
        res += _term(xs, ds, i, m, r, kind)
    return res

@njit(cache=True)
def new_stack():
    """Scratch for `pairwise`'s explicit recursion stack (64 levels: n < 2**64), allocated once per kernel
    call rather than once per row."""
    return np.empty(64, np.int64), np.empty(64, np.int64), np.empty(64), np.zeros(64, np.bool_)

@njit(cache=True)
def pairwise(x, dy, lo, n, m, r, kind, stack):
    """NumPy's pairwise sum of the n terms from lo, in NumPy's order: halves of n // 2 rounded down to a
    multiple of 8, recursively, down to blocks of at most 128 (PW_BLOCKSIZE). The recursion runs on an
    explicit stack: a cached recursive function segfaults when loaded from numba's on-disk cache
    (https://github.com/numba/numba/issues/6061, open; seen here with numba 0.68)."""
    if n <= 128:
        return _leaf(x, dy, lo, n, m, r, kind)
    stack_lo, stack_n, stack_left, has_left = stack  # stack_left: a left half's sum, once known
    top = 0
    stack_lo[0], stack_n[0], has_left[0] = lo, n, False
    while True:
        cl, cn = stack_lo[top], stack_n[top]
        if cn > 128:  # descend into the left half
            half = cn // 2
            half -= half % 8
            top += 1
            stack_lo[top], stack_n[top], has_left[top] = cl, half, False
            continue
        value = _leaf(x, dy, cl, cn, m, r, kind)
        while True:  # hand the value up: a left half waits for its right one, a right half completes
            top -= 1
            if top < 0:
                return value
            pl, pn = stack_lo[top], stack_n[top]
            half = pn // 2
            half -= half % 8
            if not has_left[top]:
                has_left[top], stack_left[top] = True, value
                top += 1
                stack_lo[top], stack_n[top], has_left[top] = pl + half, pn - half, False
                break
            value = stack_left[top] + value

@njit(cache=True, parallel=True)
def channel_sums(x, dy, L, C, T, m, r, kind):
    """Per channel, NumPy's sum of the terms `kind` over every axis but the channel axis: rows of T
    pairwise, added in memory order to an accumulator starting at 0.0 (T = 1: element by element).
    Channels are independent, so they go to the threads; each channel's order stays NumPy's."""
    out = np.zeros(C)
    if T == 1:  # a row of C: each channel's accumulator takes its element in turn (memory order)
        for l in range(L):
            xs, ds = x[l * C:(l + 1) * C], dy[l * C:(l + 1) * C]
            for c in range(C):
                out[c] += _term(xs, ds, c, m[c], r[c], kind)
        return out
    for c in prange(C):
        stack = new_stack()
        acc = 0.0
        for l in range(L):
            acc += pairwise(x, dy, (l * C + c) * T, T, m[c], r[c], kind, stack)
        out[c] = acc
    return out

@njit(cache=True, parallel=True)
def backward_sums(x, dy, L, C, T, m, r):
    """Per channel: sum(dy * (x - m) * r), sum(dy), sum(dy * (x - m)), one row at a time, the three in one
    traversal (pairwise3)."""
    dgamma, dbeta, dyxm = np.zeros(C), np.zeros(C), np.zeros(C)
    if T == 1:
        for l in range(L):
            xs, ds = x[l * C:(l + 1) * C], dy[l * C:(l + 1) * C]
            for c in range(C):
                dgamma[c] += _term(xs, ds, c, m[c], r[c], 4)
                dbeta[c] += ds[c]
                dyxm[c] += _term(xs, ds, c, m[c], r[c], 3)
        return dgamma, dbeta, dyxm
    for c in prange(C):
        stack, left = new_stack(), np.empty((64, 3))
        a1 = a2 = a3 = 0.0
        for l in range(L):
            g, b, s = pairwise3(x, dy, (l * C + c) * T, T, m[c], r[c], stack, left)
            a1 += g
            a2 += b
            a3 += s
        dgamma[c], dbeta[c], dyxm[c] = a1, a2, a3
    return dgamma, dbeta, dyxm

# The elementwise passes: one parallel region per pass over blocks of contiguous ranges (a region per block would
# wait on every call for a second thread, which on a shared machine may not be scheduled for milliseconds).
# Threads also share the page faults of the freshly allocated output: the pass on (32, 64, 112, 112) took 28 ms
# on one thread and 18 ms on two, against 14 ms into an already-touched y (2 cores, Dec 2026).
@njit(cache=True, parallel=True)
def forward(x, y, los, his, C, T, g, m, r, b):
    """y = gamma * (x - m) * r + beta on the flat ranges [los[k], his[k]) (see _forward_range)."""
    for k in prange(los.size):
        _forward_range(x, y, los[k], his[k], C, T, g, m, r, b)

@njit(cache=True, parallel=True)
def backward_dx(x, dy, dx, los, his, C, T, gr, k1, use_mean, k2, mu, s, use_var):
    """dx on the flat ranges [los[k], his[k]) (see _backward_dx_range)."""
    for k in prange(los.size):
        _backward_dx_range(x, dy, dx, los[k], his[k], C, T, gr, k1, use_mean, k2, mu, s, use_var)

@njit(cache=True)
def _forward_range(x, y, lo, hi, C, T, g, m, r, b):
    """y = gamma * (x - m) * r + beta on the flat range [lo, hi), as NumPy evaluates it left to right."""
    i = lo
    while i < hi:
        c = (i // T) % C
        end = min(hi, (i // T + 1) * T)
        gc, mc, rc, bc = g[c], m[c], r[c], b[c]
        xs, ys = x[i:end], y[i:end]  # from 0: vectorizes (see _leaf)
        for j in range(end - i):
            ys[j] = ((gc * (xs[j] - mc)) * rc) + bc
        i = end

@njit(cache=True)
def _backward_dx_range(x, dy, dx, lo, hi, C, T, gr, k1, use_mean, k2, mu, s, use_var):
    """dx = gamma*r*dy [- gamma*r*a*mean(dy)] [+ gamma*r'*c*(2/n)*(x - mu)*sum(dy*(x - m))] on [lo, hi),
    with the per-channel factors gr, k1 = gamma*r*a*mean(dy), k2 = gamma*r'*c*(2/n) formed by NumPy."""
    i = lo
    while i < hi:
        c = (i // T) % C
        end = min(hi, (i // T + 1) * T)
        grc, k1c, k2c, muc, sc = gr[c], k1[c], k2[c], mu[c], s[c]
        xs, dys, dxs = x[i:end], dy[i:end], dx[i:end]  # from 0: vectorizes (see _leaf)
        for j in range(end - i):
            v = grc * dys[j]
            if use_mean:
                v = v - k1c
            if use_var:
                v = v + (k2c * (xs[j] - muc)) * sc
            dxs[j] = v
        i = end


# -- the moments one channel at a time: a channel of a (L, C, T) array is L rows of T, and each of the three
# passes of the moments depends on the previous pass's sum over the WHOLE channel; finishing a channel before the
# next re-reads it from the cache (L2/L3) where three whole-array passes read x from memory three times. The sums
# are the same (each row pairwise, rows in memory order onto an accumulator starting at 0.0), so the same bits.
# (The backward is faster as two whole-array passes: a channel of x and dy together outgrows the cache, and the
# dx pass vectorizes better on its own; its three sums share one traversal, `pairwise3`.)

@njit(cache=True, parallel=True)
def channel_moments(x, L, C, T, n):
    """statistics.moments' corrected two-pass (mean, biased variance), channel by channel (T > 1); channels
    are independent, so they go to the threads."""
    mean, var = np.empty(C), np.empty(C)
    for c in prange(C):
        stack = new_stack()
        acc = 0.0
        for l in range(L):
            acc += pairwise(x, x, (l * C + c) * T, T, 0.0, 1.0, 0, stack)
        m = acc / n
        acc = 0.0
        for l in range(L):
            acc += pairwise(x, x, (l * C + c) * T, T, m, 1.0, 1, stack)
        if not np.isinf(m):  # statistics._corrected: an infinite mean stays infinite (inf - inf would be NaN)
            m = m + acc / n
        acc = 0.0
        for l in range(L):
            acc += pairwise(x, x, (l * C + c) * T, T, m, 1.0, 2, stack)
        mean[c], var[c] = m, acc / n
    return mean, var


@njit(cache=True)
def _leaf3(x, dy, lo, n, m, r):
    """_leaf of the backward's three terms at once, dy*(x - m)*r, dy and dy*(x - m), each with its own eight
    accumulators in _leaf's order (one read of x and dy for the three)."""
    xs, ds = x[lo:lo + n], dy[lo:lo + n]  # from 0, as in _leaf
    if n < 8:
        g = b = s = -0.0
        for i in range(n):
            p = ds[i] * (xs[i] - m)
            g += p * r
            b += ds[i]
            s += p
        return g, b, s
    p0, p1, p2, p3 = ds[0] * (xs[0] - m), ds[1] * (xs[1] - m), ds[2] * (xs[2] - m), ds[3] * (xs[3] - m)
    p4, p5, p6, p7 = ds[4] * (xs[4] - m), ds[5] * (xs[5] - m), ds[6] * (xs[6] - m), ds[7] * (xs[7] - m)
    g0, g1, g2, g3, g4, g5, g6, g7 = p0 * r, p1 * r, p2 * r, p3 * r, p4 * r, p5 * r, p6 * r, p7 * r
    b0, b1, b2, b3, b4, b5, b6, b7 = ds[0], ds[1], ds[2], ds[3], ds[4], ds[5], ds[6], ds[7]
    s0, s1, s2, s3, s4, s5, s6, s7 = p0, p1, p2, p3, p4, p5, p6, p7
    top = n - n % 8
    for j in range(8, top, 8):
        q0, q1 = ds[j] * (xs[j] - m), ds[j + 1] * (xs[j + 1] - m)
        q2, q3 = ds[j + 2] * (xs[j + 2] - m), ds[j + 3] * (xs[j + 3] - m)
        q4, q5 = ds[j + 4] * (xs[j + 4] - m), ds[j + 5] * (xs[j + 5] - m)
        q6, q7 = ds[j + 6] * (xs[j + 6] - m), ds[j + 7] * (xs[j + 7] - m)
        g0 += q0 * r
        g1 += q1 * r
        g2 += q2 * r
        g3 += q3 * r
        g4 += q4 * r
        g5 += q5 * r
        g6 += q6 * r
        g7 += q7 * r
        b0 += ds[j]
        b1 += ds[j + 1]
        b2 += ds[j + 2]
        b3 += ds[j + 3]
        b4 += ds[j + 4]
        b5 += ds[j + 5]
        b6 += ds[j + 6]
        b7 += ds[j + 7]
        s0 += q0
        s1 += q1
        s2 += q2
        s3 += q3
        s4 += q4
        s5 += q5
        s6 += q6
        s7 += q7
    g = ((g0 + g1) + (g2 + g3)) + ((g4 + g5) + (g6 + g7))
    b = ((b0 + b1) + (b2 + b3)) + ((b4 + b5) + (b6 + b7))
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(top, n):
        p = ds[i] * (xs[i] - m)
        g += p * r
        b += ds[i]
        s += p
    return g, b, s


@njit(cache=True)
def pairwise3(x, dy, lo, n, m, r, stack, left):
    """`pairwise` of the backward's three terms (see _leaf3) over one traversal: the same halves, the same
    order, so each sum has pairwise's bits. `left` is (64, 3) scratch for the left halves' sums."""
    if n <= 128:
        return _leaf3(x, dy, lo, n, m, r)
    stack_lo, stack_n, _, has_left = stack
    top = 0
    stack_lo[0], stack_n[0], has_left[0] = lo, n, False
    while True:
        cl, cn = stack_lo[top], stack_n[top]
        if cn > 128:
            half = cn // 2
            half -= half % 8
            top += 1
            stack_lo[top], stack_n[top], has_left[top] = cl, half, False
            continue
        g, b, s = _leaf3(x, dy, cl, cn, m, r)
        while True:
            top -= 1
            if top < 0:
                return g, b, s
            pl, pn = stack_lo[top], stack_n[top]
            half = pn // 2
            half -= half % 8
            if not has_left[top]:
                has_left[top] = True
                left[top, 0], left[top, 1], left[top, 2] = g, b, s
                top += 1
                stack_lo[top], stack_n[top], has_left[top] = pl + half, pn - half, False
                break
            g, b, s = left[top, 0] + g, left[top, 1] + b, left[top, 2] + s
