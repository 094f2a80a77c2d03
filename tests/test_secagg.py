"""Secure aggregation through Flower's SecAgg+ (fedlib.flower.secagg), on an in-process Grid (no SuperLink, no Ray):
the secure mean is the plain one up to quantisation, the plain protocol on that Grid is the in-process run, and the
protocol's cost in messages is measured."""

import pytest
import torch

pytest.importorskip("flwr")

from fedlib.config import ModelConfig, TrainConfig  # noqa: E402
from fedlib.simulation import SimulationError, run_simulation  # noqa: E402

from .configs import build  # noqa: E402


def cfg(**kw):
    base = dict(task="sst2", num_clients=4, clients_per_round=3, rounds=2, train_limit=48, eval_limit=24, seed=7)
    base["batch_clients"] = "off"  # nodes train one client each: the same dropout draws as one by one
    return build(model=ModelConfig(prompt_len=2), train=TrainConfig(batch_size=8), **{**base, **kw})


def on_local_grid(c, secure: bool, backbone):
    from fedlib.flower.apps import FlowerSimulation, make_client_app
    from fedlib.flower.local_grid import LocalGrid

    grid = LocalGrid(make_client_app(), c.fed.num_clients)
    sim = FlowerSimulation(c, grid, progress=False, secure_aggregation=secure, backbone=backbone)
    return sim.run(), grid


def test_the_secure_mean_is_the_plain_mean_up_to_quantisation(bundled_backbone):
    c = cfg(strategy="fedavg", rounds=1)  # one round: the difference is the quantisation alone
    local = run_simulation(c, backbone=bundled_backbone, progress=False)
    plain, plain_grid = on_local_grid(c, False, bundled_backbone)
    secure, secure_grid = on_local_grid(c, True, bundled_backbone)
    for k, v in local.server.shared.items():
        assert torch.equal(plain.server.shared[k], v)  # the plain messages on this Grid: the in-process run
        err = float((secure.server.shared[k] - v).abs().max())
        assert err < 2e-5, (k, err)  # a quantisation step, 2 x 8 / 2**22 (4e-6), over the clients' weights
    assert any(not torch.equal(secure.server.shared[k], v) for k, v in local.server.shared.items())  # quantised
    cols = ["round", "clients", "reported", "failed"]
    assert secure.history[cols].to_dict("records") == local.history[cols].to_dict("records")
    # SecAgg+ takes four round trips per round (set-up, keys, masked vectors, unmasking) instead of one
    extra = secure_grid.counts()["messages"] - plain_grid.counts()["messages"]
    assert extra == 2 * 3 * 3 * c.fed.rounds, (secure_grid.counts(), plain_grid.counts())


@pytest.mark.parametrize(
    "strategy,params,needle",
    [("scaffold", {}, "dc_i"), ("fedpeptao", {"shared_layers": 2}, "control_variates")],
)
def test_strategies_that_need_more_than_the_mean_are_refused(bundled_backbone, strategy, params, needle):
    with pytest.raises(SimulationError, match=needle):
        on_local_grid(cfg(strategy=strategy, **params), True, bundled_backbone)


def test_an_update_outside_the_quantisers_range_fails_loudly():
    """SecAgg+ clips each scaled coordinate to +-clipping_range before quantising: a client whose update (scaled by
    n_i / max_weight) leaves it raises, naming itself and the value, instead of being clipped silently."""
    import json
    from types import SimpleNamespace

    from fedlib.flower.secagg import fit_reply, range_error

    conf = {"names": json.dumps(["a"]), "max-weight": 10.0, "clipping-range": 8.0, "partition-id": 3}
    theta = {"a": torch.full((3,), 5.0)}  # large values are fine: what travels is the update y_i - theta
    result = SimpleNamespace(shared={"a": torch.tensor([5.0, 25.0, 5.0])}, num_examples=5)
    with pytest.raises(ValueError, match=r"client 3's update reaches 10 .* clipping range \+-8"):
        fit_reply(None, conf, result, theta)
    assert range_error(conf, result, {"a": result.shared["a"] - theta["a"]}).startswith("secure aggregation: client 3")
    assert range_error(conf, SimpleNamespace(num_examples=3), {"a": result.shared["a"] - theta["a"]}) is None  # 6
    with pytest.raises(ValueError, match="client 3"):  # a non-finite update is refused the same way
        fit_reply(
            None, conf, SimpleNamespace(shared={"a": torch.tensor([5.0, float("nan"), 5.0])}, num_examples=5), theta
        )
