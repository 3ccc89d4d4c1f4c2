"""The generated kernels are fresh: regenerating from the table gives the file on disk."""

from fasttape.kernels import codegen


def test_generated_file_is_fresh():
    on_disk = codegen.GENERATED_PATH.read_text()
    assert on_disk == codegen.generate(), (
        "fasttape/kernels/_generated.py is stale: run `python -m fasttape.kernels.codegen`"
    )


def test_check_flag_reports_fresh(capsys):
    assert codegen.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out
