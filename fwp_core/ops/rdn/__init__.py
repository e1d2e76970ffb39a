from .naive import rdn_naive  # noqa: F401
