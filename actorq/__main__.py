"""``python -m actorq``: the command line."""

from ._cli import main

main()
