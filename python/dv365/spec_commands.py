"""(to be written)"""


def register(sub) -> None:
    pass
