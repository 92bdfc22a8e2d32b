"""`python -m drim_train`: the same commands as `drim-train`."""

from drim_train.cli import app

app(prog_name="drim-train")
