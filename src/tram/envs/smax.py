"""StarCraft-style maps on JaxMARL SMAX (jaxmarl==0.2.0) behind :class:`TramEnv`.

Every map wraps :class:`jaxmarl.environments.smax.HeuristicEnemySMAX` (the enemy team is
JaxMARL's scripted heuristic), built directly with ``scenario=...`` and per-unit-type
arrays. JaxMARL's defaults are kept (``unit_list`` observations, its reward: normalised
enemy health lost plus a won-battle bonus of 1, walls kill, 8 world steps of 1/16 s per
env step). Summarised in ``docs/envs.md`` ("StarCraft-style maps").

Maps (:func:`smax_map_names`): the paper's nine maps first (``3m, 6m, 2s3z, 2s_vs_1sc,
1c3s5z, 3s5z, 10m_vs_11m, 15m, 20m``), then every other scenario built into JaxMARL's
``MAP_NAME_TO_SCENARIO`` (read, never mutated: this module keeps its own table).

* 3m, 2s3z, 3s5z, 10m_vs_11m (and 8m, 25m, 5m_vs_6m, ...): JaxMARL's own scenarios.
* 6m, 15m, 20m: marine mirrors (``n`` marines vs ``n`` marines) with JaxMARL's types.
* 1c3s5z (1 Colossus, 3 Stalkers, 5 Zealots vs the same) and 2s_vs_1sc (2 Stalkers vs 1
  Spine Crawler) need a new unit type each. Only these two maps get a 7th entry in the
  per-type arrays (colossus, resp. spine crawler, at type index 6); every other map
  keeps JaxMARL's six types and so exactly JaxMARL's observation sizes (3m: obs 75,
  state 72, 8 actions, 100 steps). Agent order follows the type order of the scenario:
  in 1c3s5z agent 0 is the Colossus (the agent the paper attacks), then 3 stalkers, then
  5 zealots; in 2s3z / 3s5z the stalkers come first, then the zealots (JaxMARL's order).

New unit types: how the numbers were chosen
-------------------------------------------
JaxMARL's six types against public StarCraft II unit data (LotV, Liquipedia; speeds and
cooldowns at "faster" game speed unless marked "normal") show the scaling SMAX applies:

    quantity   SC2: stalker / zealot / marine          SMAX: stalker / zealot / marine
    health     80+80 / 100+50 / 45 (HP + shields)      160 / 150 / 45   HP + shields
    attack     13(+5 armoured) / 8 x2 / 6              13 / 8 / 9       one hit's base
                                                                        damage (no bonus,
                                                                        armour, 2nd hit;
                                                                        marine buffed)
    range      6 / melee / 5                           6 / 2 / 5        SC2; melee -> 2
    sight      10 / 9 / 9                              10 / 9 / 9       same
    radius     0.625 / 0.5 / 0.375                     same             same
    speed      4.13 / 3.15 / 3.15                      4.13 / 3.15 / 3.15  "faster"
    cooldown   1.34 (1.87 normal) / 0.86 / 0.61        1.87 / 0.86 / 0.61  "faster" for
                                                                        5 of 6 types; the
                                                                        stalker's is its
                                                                        "normal" value

The two new types (type index 6 on their map only):

    type           health  attack  range  sight  radius  speed  cooldown  static
    colossus       350     10      7      10     1.0     3.15   1.07      no
    spine_crawler  244     30      7      11     1.0     0      1.85      yes (rooted)

* Colossus, by SMAX's rules (SC2: 200 HP + 150 shields; 10 (+5 light) x2 -> 10; cooldown
  1.5 normal = 1.07 faster, in "faster" seconds like most SMAX types; range 7 without the Extended Thermal
  Lance upgrade; sight 10; speed 2.25 normal = 3.15 faster; radius 1.0). Not modelled,
  as for SMAX's own units: the second hit, the bonus against light units, its line
  splash, and walking over small units (SMAX pushes overlapping units apart by radius,
  so the Colossus collides like any unit). 1c3s5z is a mirror, so the rules cannot tip
  its balance.
* Spine Crawler, rooted (SC2: 300 HP, armour 2; 25 (+5 armoured); cooldown 1.85 normal =
  1.32 faster; range 7; sight 11; 2x2 footprint = radius 1.0). It outranges the
  stalkers (7 vs 6), so they take fire before they can shoot. 2s_vs_1sc is not a
  mirror: the crawler only ever fights armoured stalkers, and SMAX's plain rules
  (300 HP, 25 damage, 1.32 s) tip the fight far from SC2's (measured: no simple
  scripted policy wins, best 2% of episodes). So we keep SC2's *matchup* instead:
  attack 30 = 25 + 5 against armoured (shields have no armour); health 244 = 300 x 13/16,
  since a stalker hits the crawler for 13 + 5 - 2 armour = 16 in SC2 but 13 in SMAX
  (19 stalker hits kill it in both); cooldown 1.85 in SC2's "normal" seconds, the unit
  SMAX's stalker cooldown (1.87) is in, so the two fire at SC2's relative rates. A
  straight fight then ends as in SC2 (by hand: the crawler keeps 15% of its health in
  SC2, 20% here; measured: charging stalkers leave it 14% on average), so winning
  needs micro (SC2 players rely on shield regeneration, which SMAX lacks; here
  hit-and-run on the weapon cooldowns works). Measured over 64 episodes (key 0):
  random policy 0% wins, charge-and-focus-fire 0%, a simple hit-and-run script on the
  own weapon cooldown 25% (``tests/test_smax_envs.py`` has both scripts). Not
  modelled: creep regeneration, uprooting.

The Spine Crawler never moves. Velocity 0 alone is not enough: SMAX pushes overlapping
units apart every world step (``_push_units_away``) and kills units touching a wall.
Maps with a static type use :class:`StaticUnitsSMAX`, a SMAX subclass whose
``_push_units_away`` gives static units infinite mass (a mobile unit overlapping a
static one takes the whole separation itself, the static one none) and whose
``_world_step`` restores static units' positions, so the position of a static unit is
bitwise constant for the whole episode (tested). It sits at the enemy spawn, far from
the walls. Every other map uses JaxMARL's SMAX class unchanged.

Episode limits
--------------
SMAX's env step is 8 world steps x 1/16 = 0.5 s in its time unit, which is SC2's "faster"
seconds (speeds and cooldowns above), i.e. 0.7 game seconds = 11.2 game loops; a SMAC
step is 8 game loops, so one SMAX step ~ 1.4 SMAC steps. SMAC's limits (3m 60, 2s3z 120,
3s5z 150, 1c3s5z 180, 10m_vs_11m 150, 2s_vs_1sc 300) so become 43, 86, 107, 129, 107 and
214 SMAX steps. We keep JaxMARL's default of 100 for every map but 2s_vs_1sc: the
heuristic enemy charges, so fights end well within 100 steps, also where 100 is a
little under the converted SMAC limit (3s5z, 10m_vs_11m: 107; 1c3s5z: 129; a random
policy's 1c3s5z episodes last 57 steps on average). 2s_vs_1sc has SMAC's longest limit
because the enemy does not move and the stalkers must wear a longer-ranged crawler
down by hit-and-run; it gets 200 (~ 300 / 1.4, rounded down; the hit-and-run script
above wins in 55-75 steps). ``max_steps`` overrides the limit of any map.

Array view (:class:`SmaxEnv`)
-----------------------------
* ``obs [N, D]``: the allies' observations stacked in agent order (``ally_0, ...``);
  ``state [S]``: SMAX's ``world_state``; ``avail [N, A]`` bool (a dead agent can only
  stop, so every row has a True).
* ``reward``: the shared team reward (SMAX gives every ally the same number).
* ``done``: SMAX's ``dones["__all__"]`` (a team eliminated, or the time limit) or
  ``step >= episode_limit``. The second term is ours: SMAX tests its limit before it
  increments its step counter, so its own episodes last ``max_steps + 1`` steps (3m:
  101, measured); tram's learners size episode buffers by ``spec.episode_limit``, so
  tram ends the episode at exactly ``episode_limit`` steps (SMAX's ``max_steps`` is set
  to the same number, keeping every other SMAX number as JaxMARL has it).
  ``step_arrays`` calls SMAX's ``step_env`` (no auto-reset), so stepping past ``done``
  keeps simulating; callers mask it.
* ``terminated``: ``done`` and some team eliminated (ours: an elimination on the
  time-limit step still counts as terminated, since nothing follows it to bootstrap).
* ``won``: ``done``, every enemy dead and at least one ally alive (from the units'
  alive flags; SMAX's step info is empty). Ours: if both teams die at the same step it
  is a draw (``terminated`` but not ``won``), as in SMAX's reward (no won-battle bonus)
  and in SMAC (``game_result`` 0).

Options of :func:`make_smax_env`: ``enemy_shoots`` (bool, default True),
``attack_mode`` (``"closest"`` or ``"random"``, the heuristic's targeting, default
``"closest"``), ``max_steps`` (int >= 1, the episode limit; default per map, above),
``normalise_state`` (bool, default False: JaxMARL's raw ``world_state``; True: the same
layout with positions, cooldowns and type indices scaled to [0, 1],
:meth:`SmaxEnv.normalised_world_state`; QMIX needs it, ``docs/envs.md``).

Letters for shapes: ``N`` allied agents, ``A`` actions, ``D`` observation features,
``S`` state features.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from numbers import Integral
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxmarl.environments.smax import HeuristicEnemySMAX, SMAX, Scenario
from jaxmarl.environments.smax.heuristic_enemy import create_heuristic_policy
from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO

from tram.envs.base import EnvSpec, TimeStep, TramEnv

# ---- unit types -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnitType:
    """Per-type numbers SMAX's constructor takes (units as in SMAX: map units, seconds)."""

    name: str
    shorthand: str
    velocity: float
    attack: float
    attack_range: float
    sight_range: float
    radius: float
    health: float
    cooldown: float
    static: bool = False
    """Never moves (see :class:`StaticUnitsSMAX`)."""


# JaxMARL 0.2.0's six default types, in its index order (a test checks they equal SMAX's
# constructor defaults).
SMAX_UNIT_TYPES: tuple[UnitType, ...] = (
    UnitType("marine", "m", 3.15, 9.0, 5.0, 9.0, 0.375, 45.0, 0.61),
    UnitType("marauder", "M", 2.25, 10.0, 6.0, 10.0, 0.5625, 125.0, 1.07),
    UnitType("stalker", "s", 4.13, 13.0, 6.0, 10.0, 0.625, 160.0, 1.87),
    UnitType("zealot", "Z", 3.15, 8.0, 2.0, 9.0, 0.5, 150.0, 0.86),
    UnitType("zergling", "z", 4.13, 5.0, 2.0, 8.0, 0.375, 35.0, 0.5),
    UnitType("hydralisk", "h", 3.15, 12.0, 5.0, 9.0, 0.625, 80.0, 0.59),
)
COLOSSUS = UnitType("colossus", "C", 3.15, 10.0, 7.0, 10.0, 1.0, 350.0, 1.07)
SPINE_CRAWLER = UnitType("spine_crawler", "S", 0.0, 30.0, 7.0, 11.0, 1.0, 244.0, 1.85, static=True)

# ---- maps -----------------------------------------------------------------------------

PAPER_MAPS: tuple[str, ...] = (
    "3m", "6m", "2s3z", "2s_vs_1sc", "1c3s5z", "3s5z", "10m_vs_11m", "15m", "20m",
)
DEFAULT_EPISODE_LIMIT = 100
"""JaxMARL's ``max_steps`` default, kept for every map but those in ``_EPISODE_LIMITS``."""
_EPISODE_LIMITS: dict[str, int] = {"2s_vs_1sc": 200}
ATTACK_MODES: tuple[str, ...] = ("closest", "random")
OPTIONS: tuple[str, ...] = ("enemy_shoots", "attack_mode", "max_steps", "normalise_state")


@dataclass(frozen=True)
class SmaxMap:
    """One map: the unit types it uses (index = SMAX type id) and its scenario.

    Attributes:
        unit_types: the per-type table handed to SMAX (JaxMARL's six, plus new ones).
        ally_types / enemy_types: per-unit type ids, allies then enemies.
        smacv2: SMACv2 random positions and unit types (``ally_types`` is then a dummy).
    """

    unit_types: tuple[UnitType, ...]
    ally_types: tuple[int, ...]
    enemy_types: tuple[int, ...]
    smacv2: bool = False

    def scenario(self) -> Scenario:
        """The map as a JaxMARL SMAX ``Scenario`` (unit types, team sizes)."""
        types = jnp.asarray(self.ally_types + self.enemy_types, dtype=jnp.uint8)
        return Scenario(types, len(self.ally_types), len(self.enemy_types), self.smacv2, self.smacv2)


def _mirror(types: tuple[int, ...], extra: tuple[UnitType, ...] = ()) -> SmaxMap:
    return SmaxMap(SMAX_UNIT_TYPES + extra, types, types)


def _from_jaxmarl(sc: Scenario) -> SmaxMap:
    types = tuple(int(t) for t in np.asarray(sc.unit_types))
    n = sc.num_allies
    smacv2 = bool(sc.smacv2_position_generation or sc.smacv2_unit_type_generation)
    if sc.smacv2_position_generation != sc.smacv2_unit_type_generation:
        raise NotImplementedError("SMAX scenario mixing SMACv2 and fixed generation")
    return SmaxMap(SMAX_UNIT_TYPES, types[:n], types[n:], smacv2)


_MARINE, _STALKER, _ZEALOT, _NEW = 0, 2, 3, len(SMAX_UNIT_TYPES)
_MAPS: dict[str, SmaxMap] = {
    "6m": _mirror((_MARINE,) * 6),
    "15m": _mirror((_MARINE,) * 15),
    "20m": _mirror((_MARINE,) * 20),
    "1c3s5z": _mirror((_NEW,) + (_STALKER,) * 3 + (_ZEALOT,) * 5, (COLOSSUS,)),
    "2s_vs_1sc": SmaxMap(SMAX_UNIT_TYPES + (SPINE_CRAWLER,), (_STALKER,) * 2, (_NEW,)),
}
for _name, _sc in MAP_NAME_TO_SCENARIO.items():
    _MAPS.setdefault(_name, _from_jaxmarl(_sc))
_MAP_NAMES: tuple[str, ...] = PAPER_MAPS + tuple(n for n in _MAPS if n not in PAPER_MAPS)
assert set(PAPER_MAPS) <= set(_MAPS)


def smax_map_names() -> list[str]:
    """The paper's nine maps first, then every other JaxMARL SMAX scenario name."""
    return list(_MAP_NAMES)


# ---- SMAX with static units ------------------------------------------------------------


class StaticUnitsSMAX(SMAX):
    """SMAX in which units of the ``static_types`` never move (e.g. a rooted Spine Crawler).

    ``_push_units_away`` treats static units as immovable (a mobile unit overlapping one
    takes the whole separation; two static units stay where they are), and
    ``_world_step`` restores their positions after movement.
    """

    def __init__(self, static_types: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        mask = np.zeros((len(self.unit_type_names),), dtype=bool)
        mask[list(static_types)] = True
        self._static_type_mask = mask

    def _is_static(self, state) -> jax.Array:
        return jnp.asarray(self._static_type_mask)[state.unit_types]

    def _push_units_away(self, state, firmness: float = 1.0):
        static = self._is_static(state)
        alive_pair = state.unit_alive[:, None] & state.unit_alive[None, :]
        delta = state.unit_positions[:, None] - state.unit_positions[None, :]
        dist = jnp.linalg.norm(delta, axis=-1) + jnp.identity(self.num_agents) + 1e-6
        radii = self.unit_type_radiuses[state.unit_types]
        overlap = jnp.where(alive_pair, jax.nn.relu((radii[:, None] + radii[None, :]) / dist - 1.0), 0.0)
        # Share of the separation unit i takes from the pair (i, j): SMAX's 1/2, all of it
        # against a static j, none when i is static.
        share = jnp.where(static[:, None], 0.0, jnp.where(static[None, :], 1.0, 0.5))
        pos = state.unit_positions + firmness * jnp.sum(delta * (overlap * share)[:, :, None], axis=1)
        pos = jnp.where((state.unit_alive & ~static)[:, None], pos, state.unit_positions)
        return state.replace(unit_positions=pos)

    @partial(jax.jit, static_argnums=(0,))
    def _world_step(self, key, state, actions):
        new = super()._world_step(key, state, actions)
        pos = jnp.where(self._is_static(state)[:, None], state.unit_positions, new.unit_positions)
        return new.replace(unit_positions=pos)


class StaticUnitsHeuristicEnemySMAX(HeuristicEnemySMAX):
    """:class:`HeuristicEnemySMAX` over :class:`StaticUnitsSMAX` instead of SMAX."""

    def __init__(self, static_types: tuple[int, ...], enemy_shoots=True, attack_mode="closest", **env_kwargs):
        super().__init__(enemy_shoots=enemy_shoots, attack_mode=attack_mode, **env_kwargs)
        self._env = StaticUnitsSMAX(static_types, **env_kwargs)
        self.heuristic_policy = create_heuristic_policy(
            self._env, 1, shoot=enemy_shoots, attack_mode=attack_mode
        )


# ---- the tram environment ---------------------------------------------------------------


class SmaxEnv(TramEnv):
    """A SMAX map with JaxMARL's heuristic enemy, behind tram's array view.

    The env state is JaxMARL's ``HeuristicEnemySMAX`` state (``.state`` holds the SMAX
    state, ``.enemy_policy_state`` the heuristic's memory).
    """

    def __init__(self, name: str, smax_map: SmaxMap, inner: HeuristicEnemySMAX, normalise_state: bool = False):
        n = inner.num_allies
        types = (
            ("random",) * n
            if smax_map.smacv2
            else tuple(smax_map.unit_types[t].name for t in smax_map.ally_types)
        )
        enemies = "random units" if smax_map.smacv2 else _composition(smax_map, smax_map.enemy_types)
        allies = "random units" if smax_map.smacv2 else _composition(smax_map, smax_map.ally_types)
        super().__init__(
            EnvSpec(
                name=name,
                family="smax",
                num_agents=n,
                num_actions=int(inner.num_ally_actions),
                obs_dim=int(inner.obs_size),
                state_dim=int(inner.state_size),
                episode_limit=int(inner.max_steps),
                agent_unit_types=types,
                description=(
                    f"{name}: {allies} vs {enemies} (JaxMARL SMAX, heuristic enemy), "
                    f"episode limit {inner.max_steps}"
                ),
            )
        )
        self.smax_map = smax_map
        self.inner = inner
        self.normalise_state = bool(normalise_state)
        self.agents = list(inner.agents)
        self.observation_spaces = {a: inner.observation_spaces[a] for a in self.agents}
        self.action_spaces = {a: inner.action_spaces[a] for a in self.agents}

    # ---- array view -------------------------------------------------------------------
    def avail_arrays(self, env_state) -> jax.Array:
        """``[N, A]`` bool available actions (stop is always available)."""
        avail = self.inner.get_avail_actions(env_state)
        return jnp.stack([avail[a] for a in self.agents]).astype(bool)

    def _timestep(self, obs, env_state, reward, done) -> TimeStep:
        alive = env_state.state.unit_alive
        n = self.spec.num_agents
        allies_dead = ~jnp.any(alive[:n])
        enemies_dead = ~jnp.any(alive[n:])
        done = jnp.asarray(done, bool)
        return TimeStep(
            obs=jnp.stack([obs[a] for a in self.agents]).astype(jnp.float32),
            state=(self.normalised_world_state(env_state) if self.normalise_state
                   else jnp.asarray(obs["world_state"], jnp.float32)),
            avail=self.avail_arrays(env_state),
            reward=jnp.asarray(reward, jnp.float32),
            done=done,
            terminated=done & (allies_dead | enemies_dead),
            won=done & enemies_dead & ~allies_dead,
        )

    def normalised_world_state(self, env_state) -> jax.Array:
        """``[S]`` the world state with SMAX's own-unit observation scaling (option
        ``normalise_state``): per unit ``[health fraction, x / map width, y / map height,
        clip(weapon cooldown / the type's cooldown, 0, 1), type one-hot]`` (zeros for a
        dead unit: the features of JaxMARL's ``_get_own_features``), then the units' teams
        (0 / 1) and their type indices divided by the largest type index (in ``[0, 1]``).
        Same layout and size as JaxMARL's ``world_state``, whose positions (up to the map
        size, 32) and cooldowns are raw."""
        smax, st = self.inner._env, env_state.state  # the SMAX core: all units, allies and enemies
        health = st.unit_health / smax.unit_type_health[st.unit_types]
        pos = st.unit_positions / jnp.array([smax.map_width, smax.map_height])
        cooldown = jnp.clip(st.unit_weapon_cooldowns / smax.unit_type_weapon_cooldowns[st.unit_types], 0.0, 1.0)
        one_hot = jax.nn.one_hot(st.unit_types, smax.unit_type_bits)
        units = jnp.concatenate([health[:, None], pos, cooldown[:, None], one_hot], axis=1)
        units = jnp.where(st.unit_alive[:, None], units, 0.0)
        top = max(smax.unit_type_bits - 1, 1)
        return jnp.concatenate([units.reshape(-1), st.unit_teams.astype(jnp.float32),
                                st.unit_types.astype(jnp.float32) / top]).astype(jnp.float32)

    def reset_arrays(self, key: jax.Array):
        """New episode: ``(env_state, TimeStep)`` with reward 0 and every flag False."""
        obs, env_state = self.inner.reset(key)
        return env_state, self._timestep(obs, env_state, 0.0, False)

    def step_arrays(self, key: jax.Array, env_state, actions: jax.Array):
        """One env step of SMAX's ``step_env`` (no auto-reset).

        Args:
            key: PRNG key.
            env_state: the current state.
            actions: ``[N]`` int ally actions (0-3 move, 4 stop, 5+ attack enemy ``a - 5``).

        Returns:
            ``(env_state, TimeStep)``.
        """
        actions = jnp.asarray(actions, jnp.int32)
        acts = {a: actions[i] for i, a in enumerate(self.agents)}
        obs, env_state, rewards, dones, _ = self.inner.step_env(key, env_state, acts)
        done = dones["__all__"] | (env_state.state.step >= self.spec.episode_limit)
        return env_state, self._timestep(obs, env_state, rewards[self.agents[0]], done)

    # ---- JaxMARL dict view extra ------------------------------------------------------
    def get_obs(self, state) -> dict[str, jax.Array]:
        """Per-agent observations (and ``"world_state"``) of ``state``."""
        obs = self.inner.get_obs(state)
        obs["world_state"] = self.inner.get_world_state(state)
        return obs


def _composition(smax_map: SmaxMap, types: tuple[int, ...]) -> str:
    counts: dict[int, int] = {}
    for t in types:
        counts[t] = counts.get(t, 0) + 1
    return ", ".join(
        f"{c} {smax_map.unit_types[t].name}{'s' if c > 1 else ''}" for t, c in counts.items()
    )


# ---- construction ---------------------------------------------------------------------


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown SMAX option(s) {', '.join(unknown)}; accepted: {', '.join(OPTIONS)}")
    out: dict[str, Any] = {}
    for name in ("enemy_shoots", "normalise_state"):
        if name in options:
            v = options[name]
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"SMAX option {name} must be a bool (True or False), got {v!r}")
            out[name] = bool(v)
    if "attack_mode" in options:
        v = options["attack_mode"]
        if v not in ATTACK_MODES or not isinstance(v, str):
            raise ValueError(
                f"SMAX option attack_mode must be one of {', '.join(ATTACK_MODES)}, got {v!r}"
            )
        out["attack_mode"] = v
    if "max_steps" in options:
        v = options["max_steps"]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, Integral) or v < 1:
            raise ValueError(f"SMAX option max_steps must be an int >= 1, got {v!r}")
        out["max_steps"] = int(v)
    return out


def make_smax_env(name: str, **options) -> SmaxEnv:
    """Build the SMAX map ``name`` with JaxMARL's heuristic enemy.

    Args:
        name: one of :func:`smax_map_names`.
        **options: ``enemy_shoots`` (bool), ``attack_mode`` (``"closest"`` or
            ``"random"``), ``max_steps`` (int >= 1, the episode limit),
            ``normalise_state`` (bool: the scaled state of
            :meth:`SmaxEnv.normalised_world_state` instead of JaxMARL's raw one).

    Returns:
        A :class:`SmaxEnv` (a :class:`~tram.envs.base.TramEnv`).

    Raises:
        ValueError: unknown map (the message lists every map) or a bad option (the
            message names the option and value and what is accepted).
    """
    if not isinstance(name, str) or name not in _MAPS:
        raise ValueError(f"unknown SMAX map {name!r}; accepted: {', '.join(_MAP_NAMES)}")
    opts = _check_options(options)
    normalise_state = opts.pop("normalise_state", False)
    smax_map = _MAPS[name]
    ut = smax_map.unit_types
    kwargs: dict[str, Any] = dict(
        scenario=smax_map.scenario(),
        unit_type_names=[u.name for u in ut],
        unit_type_shorthands=[u.shorthand for u in ut],
        unit_type_velocities=jnp.array([u.velocity for u in ut]),
        unit_type_attacks=jnp.array([u.attack for u in ut]),
        unit_type_attack_ranges=jnp.array([u.attack_range for u in ut]),
        unit_type_sight_ranges=jnp.array([u.sight_range for u in ut]),
        unit_type_radiuses=jnp.array([u.radius for u in ut]),
        unit_type_health=jnp.array([u.health for u in ut]),
        unit_type_weapon_cooldowns=jnp.array([u.cooldown for u in ut]),
        max_steps=opts.pop("max_steps", _EPISODE_LIMITS.get(name, DEFAULT_EPISODE_LIMIT)),
        **opts,
    )
    static = tuple(i for i, u in enumerate(ut) if u.static)
    if static:
        inner: HeuristicEnemySMAX = StaticUnitsHeuristicEnemySMAX(static, **kwargs)
    else:
        inner = HeuristicEnemySMAX(**kwargs)
    return SmaxEnv(name, smax_map, inner, normalise_state=normalise_state)
