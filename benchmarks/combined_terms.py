"""How large is the J-based term of the combined direction (App. E) against its variance
term in a real run? COMA on Gather under the combined attack (f_A = 1, KL_U = 6, epsilon
annealed over 50k steps, one seed):

    PYTHONPATH=src python benchmarks/combined_terms.py [STEPS]     # default 60000

At every acting step of the poisoned agent after the first actor update (with >= 3
available actions and a nonzero variance vector) it records ``||2 r_J|| / ||r_var||``
(the unnormalised vectors; ``combined = r_var + 2 r_J``, ``docs/attack-math.md``) and the
cosine between the combined and the variance-based directions, through a
``jax.debug.callback`` in a wrapper of :func:`tram.attacks.directions.combined_direction`
(the wrapper recomputes ``K`` one-step and ``v`` as ``attack.recurrent_grad`` says, the
defaults, then returns the unchanged direction). Prints percentiles over all steps and
over the first and last thirds.
"""
from __future__ import annotations

import sys

import numpy as np
import jax
import jax.numpy as jnp

import tram.attacks.directions as D
from tram.attacks.budget import masked_softmax
from tram.attacks.perturb import AttackConfig
from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.experiments.program import make_train
from tram.learners.coma import COMAConfig

REC: list[tuple[float, float]] = []
orig = D.combined_direction


def record(ratio, cos, step_ok):
    """Host side of the callback: appends ``(ratio, cos)`` of every recorded state to ``REC``."""
    ratio, cos, ok = (np.asarray(x).reshape(-1) for x in (ratio, cos, step_ok))
    for r, c, o in zip(ratio, cos, ok):
        if o:
            REC.append((float(r), float(c)))


def wrapped(key, ctx, fn, exact_gram=False, exact_jvp=False):
    """:func:`combined_direction` (returned unchanged) plus the callback with its two terms."""
    avail = ctx.avail.astype(bool)
    pi = masked_softmax(ctx.logits, avail)
    adv = D.attacker_advantage(pi, ctx.q_values, ctx.mix_weight, avail)
    gram = D.logit_gram(fn, ctx.actor_params, ctx.actor_hidden, ctx.actor_input)
    if exact_jvp:
        v = D.logit_jvp_through_history(fn, ctx.actor_params, ctx.actor_hidden, ctx.actor_input,
                                        ctx.prev_actor_grad, ctx.hidden_tangent)
    else:
        v = D.logit_jvp(fn, ctx.actor_params, ctx.actor_hidden, ctx.actor_input, ctx.prev_actor_grad)
    r_var = D.softmax_weight_gradient(pi, D.variance_weights(pi, adv, gram, avail))
    r_j = -D.softmax_weight_gradient(pi, D.jbased_weights(pi, adv, v, avail))
    n_var = jnp.linalg.norm(r_var)
    ratio = 2.0 * jnp.linalg.norm(r_j) / jnp.maximum(n_var, 1e-30)
    comb = r_var + 2.0 * r_j
    cos = jnp.dot(comb, r_var) / jnp.maximum(jnp.linalg.norm(comb) * n_var, 1e-30)
    ok = jnp.asarray(ctx.has_prev_grad, bool) & (n_var > 1e-20) & (jnp.sum(avail) >= 3)
    jax.debug.callback(record, ratio, cos, ok)
    return orig(key, ctx, fn, exact_gram=exact_gram, exact_jvp=exact_jvp)


def main(steps: int) -> None:
    """Trains the run with the wrapped direction and prints the percentiles."""
    D.combined_direction = wrapped  # read by combined_direction_fn when the program is built
    cfg = TrainConfig(env=EnvConfig("gather"), learner=COMAConfig(epsilon_anneal_steps=50000),
                      attack=AttackConfig(method="combined", f_a=1.0, kl_u=6.0),
                      run=RunConfig(seeds=(0,), steps=steps, eval_interval=steps // 3, test_episodes=8))
    prog = make_train(cfg)
    _, m = jax.jit(jax.vmap(prog.train))(jnp.stack([jax.random.PRNGKey(0)]))
    jax.block_until_ready(m)
    r = np.array(REC)
    n = len(r)
    print(f"steps={steps} recorded states={n}")
    third = n // 3
    for name, part in (("all", r), ("first third", r[:third]), ("last third", r[-third:])):
        q = np.percentile(part[:, 0], [10, 50, 90])
        print(f"{name}: ||2 r_J||/||r_var|| p10/p50/p90 = {q[0]:.3g}/{q[1]:.3g}/{q[2]:.3g}; "
              f"cos(combined, var) median {np.median(part[:, 1]):.4f}, p10 {np.percentile(part[:, 1], 10):.4f}; "
              f"share with cos > 0.99: {np.mean(part[:, 1] > 0.99):.3f}")


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 60000)
