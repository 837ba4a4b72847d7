"""Implementation of the ``python -m polyproc`` subcommands (see ``polyproc.__main__``)."""
