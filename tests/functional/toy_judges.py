"""A toy verifiable judge for online tests: imported by the training subprocess through PYTHONPATH."""


def vowel_fraction(prompts: list[str], responses: list[str]) -> list[float]:
    """Share of a response's characters that are lowercase vowels: continuous, and learnable from scratch."""
    return [sum(c in "aeiou" for c in r) / max(len(r), 1) for r in responses]
