"""analyze, overlap, demo: engine commands that need no server."""


def register(sub) -> None:  # filled in by the engine work
    pass
