from ghostvlad.train.config import ScheduleConfig
from ghostvlad.train.schedules import SCHEDULES


def factors(name: str, epochs: int, **kw) -> list[float]:
    f = SCHEDULES.build(name, epochs=epochs, config=ScheduleConfig(name=name, **kw))
    return [f(e) for e in range(epochs)]


def test_paper_schedule_with_warmup_matches_the_original_table():
    # original.md §4.3: README setting, 128 epochs, warm-up 0.1
    expected = [0.1] * 2 + [1] * 30 + [0.1] * 19 + [0.01] * 13 + [1] * 32 + [0.1] * 19 + [0.01] * 13
    assert factors("paper", 128, warmup_ratio=0.1, warmup_epochs=2) == expected


def test_paper_schedule_defaults_without_warmup():
    # 56 epochs, no warm-up: 0-13 lr, 14-21 0.1, 22-27 0.01, 28-41 lr, 42-49 0.1, 50-55 0.01
    expected = [1] * 14 + [0.1] * 8 + [0.01] * 6 + [1] * 14 + [0.1] * 8 + [0.01] * 6
    assert factors("paper", 56, warmup_ratio=0) == expected


def test_cosine_and_onecycle_shapes():
    cfg = ScheduleConfig(warmup_epochs=2, min_ratio=0.01)
    for name in ("cosine", "onecycle"):
        f = SCHEDULES.build(name, epochs=10, config=cfg)
        assert 0 < f(0.5) < f(1.5) < f(2.0) == 1.0
        assert f(6) < f(4) and abs(f(10) - 0.01) < 1e-9
