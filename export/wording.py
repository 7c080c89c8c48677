"""Counts in messages and reports: "1 photo", "3 photos"."""


def plural(count: int, word: str) -> str:
    """`count` and `word`, with the plural ending English needs when count is not 1."""
    if count == 1:
        return f"1 {word}"
    ending = "es" if word.endswith(("s", "sh", "ch", "x")) else "s"
    return f"{count:,} {word}{ending}"
