"""Output that survives any terminal encoding: a standard output that cannot encode the symbols
bscrit prints (``≈ ∞ ± √ κ ‖ —``; ``PYTHONIOENCODING=ascii``, a ``latin-1`` locale, a CI pipe)
gets them as ASCII (``~ inf +/- sqrt kappa || --``) instead of a ``UnicodeEncodeError``.

:func:`survive_encoding` installs :func:`transliterate` as the error handler of ``sys.stdout``
and ``sys.stderr`` when their encoding is not a UTF one; the command line calls it first, so the
tables, the messages and ``--help`` (typer's, written through the same streams) all pass. rich
draws its boxes and bars in ASCII on such a stream by itself. No rich import here.
"""

from __future__ import annotations

import codecs
import re
import sys
import unicodedata
from typing import TextIO

#: The name of the codec error handler :func:`survive_encoding` installs.
ERRORS = "bscrit-ascii"

#: The symbols bscrit prints, in ASCII; anything else falls back to its decomposition without
#: accents (``é`` → ``e``), else ``?``.
ASCII: dict[str, str] = {
    "≈": "~", "∼": "~", "∞": "inf", "±": "+/-", "√": "sqrt", "‖": "||", "—": "--", "–": "-",
    "−": "-", "×": "x", "÷": "/", "·": "*", "•": "*", "…": "...", "≤": "<=", "≥": ">=", "≠": "!=",
    "≲": "<~", "≳": ">~", "→": "->", "←": "<-", "⇒": "=>", "∈": " in ", "∑": "sum", "∝": "~",
    "′": "'", "″": "''", "‘": "'", "’": "'", "“": '"', "”": '"', "✓": "ok", "✗": "x",
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "Δ": "Delta", "ε": "eps",
    "η": "eta", "θ": "theta", "κ": "kappa", "λ": "lambda", "μ": "mu", "ν": "nu", "π": "pi",
    "ρ": "rho", "σ": "sigma", "τ": "tau", "φ": "phi", "χ": "chi", "ψ": "psi", "ω": "omega",
    "≪": "<<", "≫": ">>", "≡": "==", "↔": "<->", "⌈": "ceil(", "⌉": ")", "⌊": "floor(",
    "⌋": ")", "⟨": "<", "⟩": ">", "∏": "prod", "⊙": "*", "½": "1/2", "ℓ": "l", "ξ": "xi",
    "∇": "grad ", "Σ": "Sigma", "§": "sec. ", "─": "-", "━": "-", "│": "|", "┃": "|",
}  # fmt: skip
#: Superscripts become ``^`` and the characters (``10⁻³`` → ``10^-3``), subscripts the characters.
SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+", strict=True))
SUBSCRIPTS = dict(zip("₀₁₂₃₄₅₆₇₈₉₋₊", "0123456789-+", strict=True))


def to_ascii(text: str, roots: bool = True) -> str:
    """``text`` in ASCII: the symbols of :data:`ASCII` (a Greek letter's name set off by ``*``
    from a letter or digit beside it: ``2ηλ`` → ``2*eta*lambda``), super- and subscripts, accents
    dropped, anything else ``?``. ``√κ`` is ``sqrt(kappa)`` (``roots=False``, for a piece of a
    text: ``sqrt kappa``)."""
    out: list[str] = []
    prev_super = prev_word = False
    for c in re.sub(r"√(\w+)", r"√(\1)", text) if roots else text.replace("√", "√ "):
        word = False
        if c in SUPERSCRIPTS:
            piece = ("" if prev_super else "^") + SUPERSCRIPTS[c]
        elif c.isascii():
            piece = "*" + c if prev_word and c.isalnum() else c
        elif c in ASCII:
            piece, word = ASCII[c], ASCII[c].isalpha() and len(ASCII[c]) > 1 and c != "√"
            if word and out and (out[-1][-1:].isalnum() or out[-1] == "'"):
                piece = "*" + piece
        elif c in SUBSCRIPTS:
            piece = SUBSCRIPTS[c]
        else:
            plain = unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode("ascii")
            piece = plain or "?"
        out.append(piece)
        prev_super, prev_word = c in SUPERSCRIPTS, word
    return "".join(out)


def transliterate(e: UnicodeError) -> tuple[str, int]:
    """Codec error handler: the characters the stream cannot encode, as :func:`to_ascii` writes
    them beside the characters around them."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    before = e.object[e.start - 1] if e.start > 0 else ""
    after = e.object[e.end] if e.end < len(e.object) and e.object[e.end].isascii() else ""
    full = to_ascii(before + e.object[e.start : e.end] + after, roots=False)
    return full[len(to_ascii(before, roots=False)) : len(full) - len(after)], e.end


def _needs_it(stream: TextIO | None) -> bool:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return codecs.lookup(encoding).name not in ("utf-8", "utf-16", "utf-32")
    except LookupError:
        return True


def survive_encoding() -> bool:
    """Give ``sys.stdout`` and ``sys.stderr`` the :data:`ERRORS` handler when they are not UTF
    streams (nothing changes on a UTF-8 terminal or pipe); True when standard output is not."""
    try:
        codecs.lookup_error(ERRORS)
    except LookupError:
        codecs.register_error(ERRORS, transliterate)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and _needs_it(stream):
            try:
                reconfigure(errors=ERRORS)
            except (ValueError, OSError):  # a closed or detached stream: leave it
                pass
    return _needs_it(sys.stdout)
