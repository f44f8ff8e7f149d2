"""``python -m sb3_rmdp``: the ``sb3-rmdp`` command (see :mod:`sb3_rmdp.cli`)."""

from sb3_rmdp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
