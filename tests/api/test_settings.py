"""`lda serve`'s settings: bad values are refused before anything starts, naming the setting."""

from __future__ import annotations

import pytest

from api import server


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--dtype", "bogus"], {}, "dtype must be one of auto, bfloat16"),
        ([], {"DTYPE": "bf16"}, "dtype must be one of"),
        (["--max-num-seqs", "0"], {}, "max_num_seqs must be >= 1"),
    ],
)
def test_bad_setting_exits_2_naming_it(monkeypatch, capsys, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert server.cli(["--model-after", "a", "--model-before", "b", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lda serve: ") and message in err and "Traceback" not in err


def test_a_model_that_is_not_there_exits_2_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    assert server.cli(["--model-after", missing, "--model-before", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lda serve: cannot load the after model '{missing}'") and "Traceback" not in err
