"""fedlib.runtime: the machine's bf16 capability, the warning where bf16 autocast would be emulated, and the
platform line a grid's provenance records."""

import logging

import pytest

from fedlib import runtime

EPYC = {"model name": "AMD EPYC Processor", "flags": "fpu sse2 avx avx2 fma"}
SAPPHIRE = {"model name": "Intel(R) Xeon(R) Platinum 8481C", "flags": "avx2 avx512f avx512_bf16 amx_bf16"}


@pytest.mark.parametrize("info, native", [(EPYC, False), (SAPPHIRE, True), ({}, None)])
def test_cpu_bf16_reads_the_instruction_flags(monkeypatch, info, native):
    monkeypatch.setattr(runtime, "_cpuinfo", lambda: info)
    assert runtime.cpu_bf16() is native


def test_cpuinfo_parses_this_machines_first_processor():
    info = runtime._cpuinfo()
    assert info == {} or ("flags" in info and isinstance(info["flags"], str))


@pytest.mark.parametrize("info, warned", [(EPYC, True), (SAPPHIRE, False), ({}, False)])
def test_bf16_autocast_on_a_cpu_that_emulates_it_warns_once(monkeypatch, caplog, info, warned):
    monkeypatch.setattr(runtime, "_cpuinfo", lambda: info)
    runtime.warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="fedlib.runtime"):
        runtime.warn_emulated_bf16("cpu")
        runtime.warn_emulated_bf16("cpu")
    runtime.warn_emulated_bf16.cache_clear()
    hits = [r for r in caplog.records if "train.autocast='bf16'" in r.getMessage()]
    assert len(hits) == (1 if warned else 0)
    if warned:
        assert "avx512_bf16" in hits[0].getMessage() and "train.autocast='off'" in hits[0].getMessage()


def test_a_bf16_model_on_an_emulating_cpu_warns_when_built(monkeypatch, caplog, bundled_backbone):
    from fedlib.config import ExperimentConfig
    from fedlib.simulation import build_model
    from fedlib.strategies import get_strategy

    monkeypatch.setattr(runtime, "_cpuinfo", lambda: EPYC)
    runtime.warn_emulated_bf16.cache_clear()
    cfg = ExperimentConfig().with_strategy("fedavg")
    with caplog.at_level(logging.WARNING, logger="fedlib.runtime"):
        build_model(cfg, get_strategy(cfg.strategy), bundled_backbone)  # fp32: silent
        assert not caplog.records
        bf16 = cfg.replace(train=cfg.train.replace(autocast="bf16"))
        build_model(bf16, get_strategy(bf16.strategy), bundled_backbone)
    runtime.warn_emulated_bf16.cache_clear()
    assert any("without bf16 in hardware" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "info, says",
    [(EPYC, "(AMD EPYC Processor, no bf16 in hardware)"), (SAPPHIRE, "8481C, bf16 in hardware)"), ({}, "cores, torch")],
)
def test_platform_name_says_which_cpu_and_its_bf16(monkeypatch, info, says):
    monkeypatch.setattr(runtime, "_cpuinfo", lambda: info)
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    name = runtime.platform_name()
    assert name.startswith(f"{runtime.os.cpu_count()} CPU cores") and says in name and runtime.torch.__version__ in name
