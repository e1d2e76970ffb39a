"""Config values as the experiment tools write them (tune's tables and best.yaml header, compare's
settings table): one source, so the same value reads the same everywhere.

    dotted({"learner": {"lr": 0.0003}})   -> {"learner.lr": 0.0003}
    format_value(0.000312345)             -> "0.000312"
"""


def dotted(sections):
    """A config as {section: {key: value}} (config_to_dict's form, or a config.yaml read back)
    flattened to {"section.key": value}, the form of --set and of a search space."""
    return {f"{section}.{key}": value for section, fields in sections.items() for key, value in fields.items()}


def format_value(value):
    """A float to 3 significant digits (a tuned lr, an epsilon); anything else as str()."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
