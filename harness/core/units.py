"""Sizes for people: the one formatter of byte counts in messages and listings."""
from __future__ import annotations


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: "512 B", "47 KiB", "1.5 GiB" (one decimal, dropped when it is 0)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    return f"{n} B"  # not reached
