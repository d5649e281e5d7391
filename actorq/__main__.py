"""``python -m actorq``: the command line."""

from ._cli._main import main

main()
