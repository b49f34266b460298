"""`sslkd bench` runs for the strategies and ends with the overhead ratio line."""

import re

import pytest

from sslkd.cli import main
from conftest import tiny_overrides


@pytest.mark.parametrize("method", ["dino", "mokd"])
def test_bench_prints_overhead_ratio(capsys, method):
    assert main(["bench", "--method", method, "--steps", "1", "--knn-size", "500,50,16", *tiny_overrides(method)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"overhead ratio: \d+\.\d\d", last)
