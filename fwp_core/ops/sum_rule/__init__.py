from .naive import sum_rule_naive  # noqa: F401
