"""Client-level differential privacy (fedlib.privacy): clipping, noise, sampling, accounting, refusals, resume."""

import math

import numpy as np
import pytest
import torch

from fedlib.client import client_update
from fedlib.config import ConfigError
from fedlib.privacy import Privacy, PrivacyConfig, clip_update, epsilon, noise_for_epsilon
from fedlib.server import tensor_norm
from fedlib.simulation import Simulation, run_simulation

from .configs import build
from .test_simulation import Stop, tiny_cfg


def test_clip_update_scales_only_updates_longer_than_c():
    x = {"a": torch.zeros(3), "b": torch.ones(2)}
    y = {"a": torch.tensor([3.0, 0.0, 0.0]), "b": torch.tensor([1.0, 5.0])}  # ||y - x|| = 5
    clipped, norm = clip_update(x, y, 1.0)
    assert norm == pytest.approx(5.0) and tensor_norm({k: clipped[k] - x[k] for k in x}) == pytest.approx(1.0)
    same, _ = clip_update(x, y, 10.0)
    assert all(torch.equal(same[k], y[k]) for k in y)


def test_every_upload_is_clipped_to_c_in_a_run(bundled_backbone):
    seen = []

    def spy(model, k, shared, *args):
        res, state = client_update(model, k, shared, *args)
        seen.append((res, {n: v.clone() for n, v in shared.items()}))
        return res, state

    cfg = tiny_cfg(rounds=2, mode="central", clip_norm=0.05, noise_multiplier=0.5)
    res = run_simulation(cfg, backbone=bundled_backbone, progress=False, client_fn=spy)
    norms = [tensor_norm({n: r.shared[n] - x[n] for n in x}) for r, x in seen]
    assert seen and max(norms) <= 0.05 * (1 + 1e-5), norms
    assert max(r.update_norm for r, _ in seen) > 0.05  # clipping was active
    assert res.history["clipped_fraction"].max() > 0 and (res.history["epsilon"] > 0).all()


def test_no_noise_and_a_large_clip_give_the_non_private_run(bundled_backbone):
    """q = 1 (every client each round) and equal shards: DP-FedAvg's uniform sum over q N is FedAvg's mean."""
    base = dict(num_clients=3, clients_per_round=3, method="iid", rounds=2, batch_clients="off")
    plain = run_simulation(tiny_cfg(**base), backbone=bundled_backbone, progress=False)
    dp = run_simulation(
        tiny_cfg(**base, mode="central", clip_norm=1e6, noise_multiplier=0.0), backbone=bundled_backbone, progress=False
    )
    assert dp.partition.train and len({len(s) for s in dp.partition.train}) == 1
    for k, v in plain.server.shared.items():
        torch.testing.assert_close(dp.server.shared[k], v, atol=1e-6, rtol=0)
    assert plain.history["global_metric"].tolist() == dp.history["global_metric"].tolist()
    assert dp.history["epsilon"].tolist() == [math.inf, math.inf]  # clipping alone is no privacy


def test_the_accountant_matches_published_values():
    # Opacus' own test (opacus/tests/accountants_test.py): q = 0.04, z = 1.5, 2,250 steps, delta 1e-5
    assert epsilon(0.04, 1.5, 2250, 1e-5) == pytest.approx(7.32911117143, abs=1e-6)
    # Abadi et al. 2016, section 3.1: q = 0.01, sigma = 4, 10,000 steps give 1.26 with the moments accountant;
    # RDP bounds the same mechanism at most that tightly
    assert 0.9 < epsilon(0.01, 4.0, 10_000, 1e-5) <= 1.26
    # N = 100, m = 10, 100 rounds, z = 2: 2.6 with amplification by sampling, 35 counted as Flower's DP wrappers
    # count it (no amplification; the figure Flower 1.42's RdpAccountant reports for this run)
    assert epsilon(0.1, 2.0, 100, 1e-5) == pytest.approx(2.58, abs=0.01)
    assert epsilon(0.1, 2.0, 100, 1e-5, sampling="none") == pytest.approx(35.1, abs=0.1)
    # PRV is tighter than RDP; more noise, fewer rounds or a smaller q: less epsilon
    assert epsilon(0.1, 1.0, 50, 1e-5, "prv") < epsilon(0.1, 1.0, 50, 1e-5, "rdp")
    assert epsilon(0.1, 2.0, 50, 1e-5) < epsilon(0.1, 1.0, 50, 1e-5) < epsilon(0.1, 1.0, 100, 1e-5)
    assert epsilon(0.01, 1.0, 50, 1e-5) < epsilon(0.1, 1.0, 50, 1e-5)


def test_a_target_epsilon_fixes_z_before_the_run():
    z = noise_for_epsilon(3.0, 0.1, 40, 1e-5)
    assert epsilon(0.1, z, 40, 1e-5) <= 3.0 < epsilon(0.1, z * 0.99, 40, 1e-5)
    p = Privacy(PrivacyConfig(mode="central", target_epsilon=3.0), 100, 10, 40, seed=0)
    assert p.z == pytest.approx(z)


def test_central_noise_has_the_stated_mean_and_std():
    """Delta_t = (sum of clipped updates + N(0, (zC)^2)) / (qN): over 200 rounds x 1,000 coordinates."""
    p = Privacy(PrivacyConfig(mode="central", clip_norm=2.0, noise_multiplier=1.5), 100, 10, 1, seed=0)
    x = {"a": torch.zeros(1000)}
    draws = torch.stack([p.aggregate(x, [], r)[0]["a"] for r in range(200)]).double()
    std = 1.5 * 2.0 / 10
    assert abs(float(draws.mean())) < 4 * std / math.sqrt(draws.numel())
    assert float(draws.std()) == pytest.approx(std, rel=0.01)
    assert not torch.equal(draws[0], draws[1])  # a fresh draw each round, the same for the same (seed, round)
    assert torch.equal(p.aggregate(x, [], 7)[0]["a"], p.aggregate(x, [], 7)[0]["a"])


def test_secure_rng_draws_fresh_noise_and_cohorts_with_the_stated_law():
    """privacy.secure_rng: the same (seed, round) gives other noise and cohorts each time (nothing to rebuild them
    from), with the seeded draws' law: mean 0, std z C / (qN), a normal's fourth moment, Poisson rate q."""
    from fedlib.secure_random import secure_normal

    cfg = PrivacyConfig(mode="central", clip_norm=2.0, noise_multiplier=1.5, secure_rng=True)
    p = Privacy(cfg, 100, 10, 1, seed=0)
    x = {"a": torch.zeros(1000), "b": torch.zeros(3, 5)}
    a, b = p.aggregate(x, [], 7)[0], p.aggregate(x, [], 7)[0]
    assert a["b"].shape == (3, 5) and a["a"].dtype == torch.float32 and not torch.equal(a["a"], b["a"])
    draws = torch.stack([p.aggregate(x, [], 7)[0]["a"] for _ in range(200)]).double()
    std = 1.5 * 2.0 / 10
    assert abs(float(draws.mean())) < 4 * std / math.sqrt(draws.numel())
    assert float(draws.std()) == pytest.approx(std, rel=0.01)
    z = secure_normal(200_000)
    assert float(np.mean(z**4)) == pytest.approx(3.0, rel=0.05) and abs(float(np.mean(z**3))) < 0.05
    sizes = [len(Privacy(cfg, 20, 2, 1, seed=3).sample(0)) for _ in range(2000)]
    assert np.mean(sizes) == pytest.approx(2.0, rel=0.05) and min(sizes) == 0 and len(set(sizes)) > 2  # not fixed


def test_seeded_noise_says_who_can_rebuild_it(caplog):
    from fedlib import privacy

    privacy._warn_seeded.cache_clear()
    with caplog.at_level("WARNING", logger="fedlib.privacy"):
        Privacy(PrivacyConfig(mode="central", secure_rng=True), 10, 2, 1, seed=0)
        assert not caplog.records
        Privacy(PrivacyConfig(mode="central", noise_multiplier=0.0), 10, 2, 1, seed=0)  # clipping only: no noise
        assert not caplog.records
        Privacy(PrivacyConfig(mode="central"), 10, 2, 1, seed=0)
    assert "privacy.secure_rng: true" in caplog.text


def test_local_mode_keeps_noised_uploads_and_counts_every_upload(bundled_backbone):
    """A local-DP upload's norm is about z C sqrt(d) whatever the client did: the divergence bound
    (run.max_update_norm) does not apply to it, and every upload that reached the server is a release."""
    cfg = tiny_cfg(rounds=2, mode="local", noise_multiplier=2.0, max_update_norm=1.0)  # far below the noise's norm
    res = run_simulation(cfg, backbone=bundled_backbone, progress=False)
    rounds = res.history.query("round > 0")
    assert (rounds["failed"] == 0).all() and (rounds["reported"] == rounds["clients"].map(len)).all()
    p = Privacy(PrivacyConfig(mode="local"), 10, 2, 3, seed=0)
    scalars: dict = {}
    p.account(scalars, [], uploaded=[3, 5])  # both sent, both left out of the mean: still released
    assert scalars["privacy"]["participations"] == {"3": 1, "5": 1}


def test_poisson_sampling_has_rate_q_and_may_be_empty():
    p = Privacy(PrivacyConfig(mode="central"), 20, 2, 1, seed=3)
    sizes = [len(p.sample(t)) for t in range(2000)]
    assert np.mean(sizes) == pytest.approx(2.0, rel=0.05) and min(sizes) == 0


@pytest.mark.parametrize(
    "strategy,params,fields",
    [
        ("scaffold", {}, ["privacy.mode", "strategy.name"]),
        ("fedpeptao", {}, ["strategy.control_variates"]),
        ("local_only", {}, ["strategy.name"]),
        ("fedpeptao", {"control_variates": False}, ["selection.choose", "selection.shared_layers"]),
    ],
)
def test_refused_combinations_name_their_fields(strategy, params, fields):
    with pytest.raises(ConfigError) as err:
        build(strategy=strategy, strategy_params=params, mode="central")
    assert all(f in str(err.value) for f in fields), str(err.value)


def test_fedpeptao_dp_steps_on_the_noised_mean_alone(bundled_backbone, tmp_path):
    """FedPepTAO-DP: momentum on the noised mean, no per-client state, layers fixed without data; epsilon in the
    results, TensorBoard and the round lines."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg(rounds=2, mode="central", shared_layers=2, choose="first", tracking="tensorboard")
    cfg = cfg.with_strategy("fedpeptao", control_variates=False)
    res = run_simulation(cfg, tmp_path, backbone=bundled_backbone, progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("privacy/epsilon")}
    rounds = res.history.query("round > 0")
    assert logged == pytest.approx(dict(zip(rounds["round"], rounds["epsilon"])))
    from fedlib.report import round_line

    assert round_line(res.history.iloc[-1].to_dict(), 2).endswith(f"epsilon {res.history['epsilon'].iloc[-1]:.3g}")
    assert set(res.server.controls) <= {"c"}  # no per-client state on the server
    assert res.selection["bytes_up"] == 0 and res.roles[:2] == ("shared", "shared")  # layers fixed without data
    assert (res.history.query("round > 0")["epsilon"].diff().dropna() > 0).all()


def test_local_mode_accounts_each_clients_participations(bundled_backbone):
    res = run_simulation(
        tiny_cfg(rounds=3, mode="local", noise_multiplier=2.0), backbone=bundled_backbone, progress=False
    )
    most = max(np.bincount([k for ks in res.history["clients"] for k in ks], minlength=4))
    assert res.history["epsilon"].iloc[-1] == pytest.approx(epsilon(1.0, 1.0, int(most), 1e-5, sampling="none"))


def test_a_killed_and_resumed_dp_run_continues_the_epsilon_count(bundled_backbone, tmp_path):
    cfg = tiny_cfg(rounds=4, checkpoint_every=1, batch_clients="off", mode="central", noise_multiplier=1.0)
    full = run_simulation(cfg, tmp_path / "full", backbone=bundled_backbone, progress=False)
    first_two = sum(len(c) for c in full.history["clients"][:2])
    calls = {"n": 0}

    def dies_in_round_3(model, k, *args):
        calls["n"] += 1
        if calls["n"] > first_two:
            raise Stop()
        return client_update(model, k, *args)

    if len(full.history["clients"][2]) == 0:
        pytest.skip("round 3 sampled no client for this seed")
    with pytest.raises(Stop):
        Simulation(cfg, tmp_path / "cut", backbone=bundled_backbone, progress=False, client_fn=dies_in_round_3).run()
    resumed = Simulation(cfg, tmp_path / "cut", backbone=bundled_backbone, progress=False).run(resume=True)
    keep = ["round", "clients", "epsilon", "releases", "global_metric"]
    assert full.history[keep].to_dict("records") == resumed.history[keep].to_dict("records")
    assert resumed.history["releases"].tolist() == [1, 2, 3, 4]
    for k, v in full.server.shared.items():
        assert torch.equal(v, resumed.server.shared[k])
