"""bench/subnet_flops.py: forward GFLOP per sub-net, and the grader's share shrinking with
model.grader_input_size by the square of the factor."""

import json

import pytest

from bench import subnet_flops

SMALL = ["data.hr_size=64", "model.isr_blocks=1", "model.seg_width=0.25", "model.grader_hidden=16"]


def _line(capsys, *overrides):
    assert subnet_flops.main([*SMALL, *overrides]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_grader_at_half_the_side_costs_about_a_quarter(capsys):
    full = _line(capsys)
    half = _line(capsys, "model.grader_input_size=32")
    assert (full["hr"], full["lr"], full["grader_input_size"]) == (64, 16, 64)
    assert half["grader_input_size"] == 32
    flops, halved = full["gflop_per_image"], half["gflop_per_image"]
    assert flops["isr"] == halved["isr"] > 0 and flops["seg"] == halved["seg"] > 0
    # Convolutions scale with the pixels; the head does not: a little over a quarter.
    assert 0.2 < halved["grader"] / flops["grader"] < 0.35
    assert flops["total"] == pytest.approx(flops["isr"] + flops["seg"] + flops["grader"], abs=0.02)
