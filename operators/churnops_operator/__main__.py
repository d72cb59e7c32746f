"""``python -m churnops_operator``."""

from churnops_operator.main import main

main()
