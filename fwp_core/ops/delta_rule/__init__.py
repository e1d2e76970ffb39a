from .naive import delta_rule_naive  # noqa: F401
