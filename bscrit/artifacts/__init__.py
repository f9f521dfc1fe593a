"""Records and their versioned JSON: the measurement (:mod:`.measurement`, :mod:`.records`), the
schedule's YAML (:mod:`.schedule_io`), atomic files and folders (:mod:`.files`, :mod:`.folders`),
the one inf/NaN <-> null pair (:mod:`.jsonvalues`). Pure: no torch, typer, rich or matplotlib.
"""
