"""serve, worker: commands that run the service."""


def register(sub) -> None:  # filled in by the service work
    pass
