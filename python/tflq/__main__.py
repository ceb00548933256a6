"""``python -m tflq``: the ``tflq`` command."""

from ._cli import main

main()
