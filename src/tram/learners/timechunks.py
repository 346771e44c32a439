"""Compute nothing on padding: time loops that stop at a batch's longest episode.

Episodes are stored padded to the episode limit (static shapes), but a batch's longest
episode is usually much shorter. These helpers split the time axis into chunks of ``C``
steps and loop (``lax.fori_loop`` with a traced trip count) only over the chunks that hold a
valid step, so the work scales with the batch's real length, rounded up to ``C``, instead of
the limit. Under ``vmap`` over seeds the loop runs to the longest seed's length (JAX masks
the finished seeds), which is still far below the limit.

* :func:`map_time`: a stateless function of each time slice (critic forward passes);
* :func:`scan_time`: a recurrent forward pass (the GRU actor), outputs per step;
  :func:`scan_chunks` the same one block of steps at a time (the block's non-recurrent
  layers in one matmul);
* :func:`recurrent_value_and_grad`: the exact gradient of a loss summed over time through a
  recurrent network (back-propagation through time), chunk by chunk in reverse with
  ``jax.vjp``, recomputing each chunk's forward pass from its stored start state.

Arrays are batch-major with time on axis 1: ``[E, T, ...]``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def _pad_time(x: jax.Array, multiple: int) -> jax.Array:
    t = x.shape[1]
    pad = (-t) % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths)


def _slice(tree, start, size):
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=1), tree)


def num_chunks(length: jax.Array, chunk: int) -> jax.Array:
    """``ceil(length / chunk)`` as int32."""
    return ((length + chunk - 1) // chunk).astype(jnp.int32)


def map_time(fn: Callable[[Any], jax.Array], xs: Any, length: jax.Array, chunk: int) -> jax.Array:
    """``ys[:, t] = fn(xs[:, t])`` for ``t < length`` (chunks of ``chunk`` steps), 0 after.

    Args:
        fn: maps a pytree of ``[E, C, ...]`` slices to an array ``[E, C, ...]``.
        xs: pytree of ``[E, T, ...]`` arrays.
        length: ``[]`` int, the number of valid leading steps.

    Returns:
        ``[E, T, ...]``.
    """
    t = jax.tree.leaves(xs)[0].shape[1]
    padded = jax.tree.map(lambda x: _pad_time(x, chunk), xs)
    out_sd = jax.eval_shape(fn, _slice(padded, 0, chunk))
    tp = jax.tree.leaves(padded)[0].shape[1]
    out = jnp.zeros((out_sd.shape[0], tp) + out_sd.shape[2:], out_sd.dtype)

    def body(j, out):
        y = fn(_slice(padded, j * chunk, chunk))
        return jax.lax.dynamic_update_slice_in_dim(out, y, j * chunk, axis=1)

    out = jax.lax.fori_loop(0, num_chunks(length, chunk), body, out)
    return out[:, :t]


def scan_chunks(run_chunk: Callable[[Any, Any], tuple[Any, jax.Array]], h0: Any, xs: Any, length: jax.Array,
                chunk: int) -> jax.Array:
    """Recurrent forward pass one block of ``chunk`` steps at a time, for ``t < length``.

    Args:
        run_chunk: ``(h, x_chunk) -> (h', y_chunk)`` on a block of ``chunk`` steps
            (``x_chunk``: pytree of ``[E, C, ...]``; ``y_chunk``: ``[E, C, ...]``), e.g. a
            network whose non-recurrent layers take the whole block in one matmul.
        h0: the initial carry.
        xs: pytree of ``[E, T, ...]``.

    Returns:
        ``ys [E, T, ...]`` (0 after the last chunk holding a step below ``length``).
    """
    t = jax.tree.leaves(xs)[0].shape[1]
    padded = jax.tree.map(lambda x: _pad_time(x, chunk), xs)
    tp = jax.tree.leaves(padded)[0].shape[1]
    out_sd = jax.eval_shape(run_chunk, h0, _slice(padded, 0, chunk))[1]
    out = jnp.zeros((out_sd.shape[0], tp) + out_sd.shape[2:], out_sd.dtype)

    def body(j, carry):
        h, out = carry
        h, y = run_chunk(h, _slice(padded, j * chunk, chunk))
        return h, jax.lax.dynamic_update_slice_in_dim(out, y, j * chunk, axis=1)

    _, out = jax.lax.fori_loop(0, num_chunks(length, chunk), body, (h0, out))
    return out[:, :t]


def scan_time(step: Callable[[Any, Any], tuple[Any, jax.Array]], h0: Any, xs: Any, length: jax.Array,
              chunk: int) -> jax.Array:
    """Recurrent forward pass ``h, y_t = step(h, xs[:, t])`` for ``t < length``.

    Args:
        step: ``(h, x_t) -> (h', y_t)`` on one time slice (``x_t``: pytree of ``[E, ...]``).
        h0: the initial carry.
        xs: pytree of ``[E, T, ...]``.

    Returns:
        ``ys [E, T, ...]`` (0 after ``length``).
    """

    def run_chunk(h, x_chunk):
        h, ys = jax.lax.scan(step, h, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), x_chunk))
        return h, jnp.swapaxes(ys, 0, 1)

    return scan_chunks(run_chunk, h0, xs, length, chunk)


def recurrent_value_and_grad(
    chunk_loss: Callable[[Any, Any, Any], tuple[jax.Array, Any]],
    params: Any,
    h0: Any,
    xs: Any,
    length: jax.Array,
    chunk: int,
) -> tuple[jax.Array, Any]:
    """Exact ``(L, dL/dparams)`` for ``L = sum_j chunk_loss_j`` through a recurrent network.

    Args:
        chunk_loss: ``(params, h_start, x_chunk) -> (loss_j, h_end)``: the loss of one chunk
            of ``chunk`` steps (a sum of per-step terms, already normalised by the caller;
            steps past ``length`` must contribute 0) and the carry at its end.
        params: differentiated parameters.
        h0: initial carry (not differentiated).
        xs: pytree of ``[E, T, ...]`` per-step inputs (including any per-step weights).
        length: ``[]`` int, valid leading steps; chunks wholly past it are skipped.

    Returns:
        ``(loss, grads)`` with ``grads`` like ``params``. Equal (up to float rounding) to
        ``jax.value_and_grad`` of the loss unrolled over the whole padded sequence.
    """
    padded = jax.tree.map(lambda x: _pad_time(x, chunk), xs)
    tp = jax.tree.leaves(padded)[0].shape[1]
    max_chunks = tp // chunk
    n = num_chunks(length, chunk)
    h_starts = jax.tree.map(lambda h: jnp.zeros((max_chunks,) + h.shape, h.dtype), h0)

    def fwd(j, carry):
        h, hs = carry
        hs = jax.tree.map(lambda s, v: s.at[j].set(v), hs, h)
        _, h = chunk_loss(params, h, _slice(padded, j * chunk, chunk))
        return h, hs

    _, h_starts = jax.lax.fori_loop(0, n, fwd, (h0, h_starts))

    def bwd(i, carry):
        loss, grads, dh = carry
        j = n - 1 - i
        h_j = jax.tree.map(lambda s: s[j], h_starts)
        x_j = _slice(padded, j * chunk, chunk)
        (loss_j, _), vjp = jax.vjp(lambda p, h: chunk_loss(p, h, x_j), params, h_j)
        g_p, g_h = vjp((jnp.ones_like(loss_j), dh))
        return loss + loss_j, jax.tree.map(jnp.add, grads, g_p), g_h

    zeros = jax.tree.map(jnp.zeros_like, params)
    dh0 = jax.tree.map(jnp.zeros_like, h0)
    loss, grads, _ = jax.lax.fori_loop(0, n, bwd, (jnp.float32(0.0), zeros, dh0))
    return loss, grads
