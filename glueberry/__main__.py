"""``python3 -m glueberry``: the same as the ``glueberry`` command (see :mod:`glueberry.cli`)."""

from __future__ import annotations

from glueberry.cli import main

if __name__ == "__main__":
    main()
