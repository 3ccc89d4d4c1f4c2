"""The generated kernels are fresh: regenerating from the table gives the files on disk."""

import pytest

from fasttape.kernels import codegen


@pytest.mark.parametrize("path,gen", codegen.targets(), ids=lambda v: getattr(v, "name", ""))
def test_generated_file_is_fresh(path, gen):
    assert path.read_text() == gen(), (
        f"{path} is stale: run `python -m fasttape.kernels.codegen`"
    )


def test_check_flag_reports_fresh(capsys):
    assert codegen.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out
